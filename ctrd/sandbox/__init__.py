"""Sandbox controllers (containerd 2.x sandbox API): see :mod:`ctrd.sandbox.controller`."""
