"""ctrd.cri.store's records without a daemon: the kubelet's configs kept as JSON and parsed
once, records of earlier versions (base64 of the message) still read, damaged records
skipped rather than fatal."""

from __future__ import annotations

import base64
import json

import pytest

from ctrd import errdefs
from ctrd.api.cri.runtime.v1 import api_pb2 as pb
from ctrd.cri import store as st


def _pod_config() -> pb.PodSandboxConfig:
    return pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="p", namespace="n",
                                                              uid="u", attempt=2),
                               labels={"app": "x"}, hostname="h")


def test_config_round_trip_and_parsed_once():
    meta = st.with_config(st.SandboxMeta(id="s1", name="p_n_u_2", config={}), _pod_config())
    assert meta.config["metadata"]["name"] == "p" and meta.config["labels"] == {"app": "x"}
    _, raw = st.meta_to_ext(meta)
    assert "_config_message" not in json.loads(raw)  # the kept message is not stored
    back = st.meta_from_ext(st.SandboxMeta, raw)
    msg = st.config_of(back)
    assert msg == _pod_config()
    assert st.config_of(back) is msg  # parsed once, kept


def test_legacy_base64_records_are_read():
    cfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c"), labels={"k": "v"})
    legacy = {"id": "c1", "name": "c_p", "sandbox_id": "s1",
              "config": base64.b64encode(cfg.SerializeToString()).decode()}
    meta = st.meta_from_ext(st.ContainerMeta, json.dumps(legacy).encode())
    assert st.config_of(meta) == cfg and isinstance(meta.config, dict)


@pytest.mark.parametrize("value", [
    b"not json", b"[]", b'"text"', b"{}",                      # no record at all
    json.dumps({"id": "s1", "name": "x"}).encode(),            # no config
    json.dumps({"id": "s1", "name": "x", "config": 7}).encode(),
    json.dumps({"id": "s1", "name": "x", "config": {"metadata": {"attempt": "many"}}}).encode(),
    json.dumps({"id": "s1", "name": "x", "config": "%%%not base64"}).encode(),
    json.dumps({"id": "s1", "name": "x",
                "config": base64.b64encode(b"\xff\xfe garbage").decode()}).encode(),
])
def test_damaged_records_are_skipped(value):
    assert st.meta_from_ext(st.SandboxMeta, value) is None


def test_unreadable_json_config_is_a_clear_error():
    meta = st.SandboxMeta(id="s1", name="x", config={"metadata": {"attempt": "many"}})
    with pytest.raises(errdefs.CtrdError, match="s1.*unreadable config"):
        st.config_of(meta)
