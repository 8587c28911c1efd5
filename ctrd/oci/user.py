"""Users and groups of an image: ``USER`` strings resolved against the rootfs's
``/etc/passwd`` and ``/etc/group``, as containerd's ``oci.WithUser`` and
``oci.WithAdditionalGIDs`` do.

The rootfs comes from an image, so it is hostile input:

- paths are resolved inside the root with every symlink read as if the root were ``/``
  (containerd's ``fs.RootPath``): ``/etc -> /`` or ``passwd -> ../../../etc/shadow`` never
  leave it;
- only regular files are read (a FIFO, device or directory at ``/etc/passwd`` is an error,
  never a blocking open or an endless read), opened without following a final symlink, and
  at most :data:`MAX_FILE_SIZE` bytes;
- lines that are not well-formed entries are skipped. runc's parser reads a non-numeric id
  as 0, so a garbage line in a hostile passwd would match uid 0 ("root"); here a line
  whose ids are not plain decimal numbers in ``[0, 2**31-1]`` is never an entry.

Errors are :class:`ctrd.errdefs.InvalidArgument` (bad file, bad user string) or
:class:`ctrd.errdefs.NotFound` (no such user or group), naming the file and the problem.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

from ctrd.diff.rootpath import root_path as _root_path  # shared with layer unpack
from ctrd.errdefs import InvalidArgument, NotFound

PASSWD = "/etc/passwd"
GROUP = "/etc/group"
MAX_FILE_SIZE = 4 << 20  # bytes; real passwd/group files are a few KiB
MAX_ID = (1 << 31) - 1   # runc rejects ids above MaxInt32, and so does containerd


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str = ""


@dataclass(frozen=True)
class Group:
    name: str
    gid: int
    members: tuple[str, ...] = ()


@dataclass
class ProcessUser:
    """The ``process.user`` of a spec: uid, gid and additional gids (primary gid first)."""

    uid: int = 0
    gid: int = 0
    additional_gids: list[int] = field(default_factory=list)

    def to_spec(self) -> dict:
        out: dict = {"uid": self.uid, "gid": self.gid}
        if self.additional_gids:
            out["additionalGids"] = list(self.additional_gids)
        return out


def _parse_id(text: str) -> int | None:
    """A decimal id in [0, MAX_ID], or None (no signs, spaces or other bases)."""
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def read_root_file(root: str, path: str, limit: int = MAX_FILE_SIZE) -> bytes | None:
    """The bytes of ``path`` inside ``root`` (symlinks resolved within it), or None if it
    does not exist. Raises InvalidArgument if it is not a regular file or is too big."""
    root = os.path.abspath(root)
    real = _root_path(root, path.lstrip("/"))
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:  # a symlink swapped in after resolution
            raise InvalidArgument(f"{path} in the image is a symlink loop") from None
        raise InvalidArgument(f"cannot open {path} in the image: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"{path} in the image is not a regular file")
        if st.st_size > limit:
            raise InvalidArgument(f"{path} in the image is {st.st_size} bytes, over the "
                                  f"{limit}-byte limit")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 16, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # grew while we read it
                raise InvalidArgument(f"{path} in the image is over the {limit}-byte limit")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _lines(data: bytes) -> list[list[str]]:
    out = []
    for raw in data.split(b"\n"):
        line = raw.strip().decode("utf-8", "replace")
        if not line or line.startswith("#"):
            continue
        out.append(line.split(":"))
    return out


def parse_passwd(data: bytes) -> list[User]:
    """The well-formed entries of a passwd file (``name:pass:uid:gid:gecos:home:shell``)."""
    users = []
    for parts in _lines(data):
        if len(parts) < 4 or not parts[0]:
            continue
        uid, gid = _parse_id(parts[2]), _parse_id(parts[3])
        if uid is None or gid is None:
            continue
        users.append(User(parts[0], uid, gid, parts[5] if len(parts) > 5 else ""))
    return users


def parse_group(data: bytes) -> list[Group]:
    """The well-formed entries of a group file (``name:pass:gid:member,member``)."""
    groups = []
    for parts in _lines(data):
        if len(parts) < 3 or not parts[0]:
            continue
        gid = _parse_id(parts[2])
        if gid is None:
            continue
        members = tuple(m for m in parts[3].split(",") if m) if len(parts) > 3 else ()
        groups.append(Group(parts[0], gid, members))
    return groups


class Rootfs:
    """The passwd and group databases of one root directory, read at most once each."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._users: list[User] | None = None
        self._groups: list[Group] | None = None
        self.has_passwd = self.has_group = False

    def users(self) -> list[User]:
        if self._users is None:
            data = read_root_file(self.root, PASSWD)
            self.has_passwd = data is not None
            self._users = parse_passwd(data) if data is not None else []
        return self._users

    def groups(self) -> list[Group]:
        if self._groups is None:
            data = read_root_file(self.root, GROUP)
            self.has_group = data is not None
            self._groups = parse_group(data) if data is not None else []
        return self._groups

    def user_by_name(self, name: str) -> User:
        users = self.users()
        if not self.has_passwd:
            raise NotFound(f"user {name!r}: the image has no {PASSWD}")
        for u in users:
            if u.name == name:
                return u
        raise NotFound(f"user {name!r} is not in the image's {PASSWD}")

    def user_by_uid(self, uid: int) -> User | None:
        for u in self.users():
            if u.uid == uid:
                return u
        return None

    def gid_by_name(self, name: str) -> int:
        groups = self.groups()
        if not self.has_group:
            raise NotFound(f"group {name!r}: the image has no {GROUP}")
        for g in groups:
            if g.name == name:
                return g.gid
        raise NotFound(f"group {name!r} is not in the image's {GROUP}")

    def supplementary_gids(self, username: str) -> list[int]:
        """Gids of the groups listing ``username`` as a member, except the group named like
        the user (containerd's WithAdditionalGIDs filter), in file order."""
        return [g.gid for g in self.groups() if g.name != username and username in g.members]


def _with_primary(gid: int, gids: list[int]) -> list[int]:
    """containerd's ensureAdditionalGids: the primary gid is always in the list, first
    unless it is already there."""
    return list(gids) if gid in gids else [gid, *gids]


def resolve_user(user: str, root: str | Rootfs | None) -> ProcessUser:
    """``process.user`` for the OCI image ``USER`` string ``user`` (``name``, ``uid``,
    ``name:group``, ``uid:gid``, ``uid:group``, ``name:gid``; empty means root) in the rootfs
    ``root`` (None: no rootfs to read, only numeric ``uid:gid`` or ``""`` work).

    As containerd (WithUser then WithAdditionalGIDs, or WithAdditionalGIDs("root") when
    there is no user):

    - ``uid``: the passwd entry with that uid gives the gid; none (or no passwd): gid 0;
    - ``name``: the passwd entry with that name, which must exist;
    - ``a:b``: numeric parts are taken as they are, names are looked up (and must exist);
    - additional gids: the groups that list the user's name as a member (the user's name
      found by uid for a numeric user; none if that uid has no entry), primary gid first.
    """
    db = root if isinstance(root, Rootfs) or root is None else Rootfs(root)

    def need_db() -> Rootfs:
        if db is None:
            raise InvalidArgument(f"user {user!r} needs the image's {PASSWD}, and there is "
                                  "no rootfs to read it from")
        return db

    parts = user.split(":") if user else []
    if len(parts) > 2:
        raise InvalidArgument(f"invalid USER value {user!r}: expected user[:group]")
    if not parts:
        uid, gid, lookup = 0, 0, "root"
    elif len(parts) == 1:
        n = _parse_id(parts[0])
        if n is not None:
            entry = need_db().user_by_uid(n)
            uid, gid = n, (entry.gid if entry else 0)
            lookup = str(n)
        else:
            if not parts[0]:
                raise InvalidArgument(f"invalid USER value {user!r}: empty user name")
            entry = need_db().user_by_name(parts[0])
            uid, gid, lookup = entry.uid, entry.gid, str(entry.uid)
    else:
        uname, gname = parts
        if not uname or not gname:
            raise InvalidArgument(f"invalid USER value {user!r}: empty user or group")
        un, gn = _parse_id(uname), _parse_id(gname)
        uid = un if un is not None else need_db().user_by_name(uname).uid
        gid = gn if gn is not None else need_db().gid_by_name(gname)
        lookup = str(uid)
    if db is None:
        return ProcessUser(uid, gid, [gid])
    # WithAdditionalGIDs(lookup): a numeric lookup names the user by its passwd entry
    if lookup.isdigit():
        entry = db.user_by_uid(int(lookup))
        username = entry.name if entry else None
    else:
        username = lookup
    extra = db.supplementary_gids(username) if username is not None else []
    return ProcessUser(uid, gid, _with_primary(gid, extra))
