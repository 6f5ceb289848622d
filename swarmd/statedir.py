"""The state dir at start-up: locked for this process, with the node's id, generation,
cluster secret or membership and seeds resolved (from the dir, and from a join token if
one is given: a ``swarmd2-`` token is redeemed with the node that issued it, see
:mod:`.joining`).

One function, :func:`prepare`, returns a :class:`LocalIdentity`; the node keeps it for
as long as it runs and releases the lock when it stops.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .authority import Authority
from .config import Config
from .credentials import Credentials, NodeKeys, RevocationList, load_or_create_node_keys
from .identity import (
    ClusterKeys,
    create_cluster_secret,
    ensure_state_dir,
    load_cluster_secret,
    load_or_create_node_id,
    next_generation,
    store_cluster_secret,
)
from .joining import EXIT_TOKEN_REFUSED, Joined, JoinError, secret_from_token
from .journal_health import DISK_ERRNOS, describe
from .member_file import (
    Membership,
    load_membership,
    reenroll_message,
    remove_membership,
    store_membership,
)

EXIT_UNWRITABLE = 75  # the state dir cannot be written (disk full): start again later
EXIT_STATE_DIR_LOST = 78  # the state dir was deleted or replaced under the running node


class StartupError(RuntimeError):
    """A reason the node cannot start that the operator can fix: one line in the log,
    no traceback, exit code ``exit_code`` (1, or one of the EXIT_* above)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class LocalIdentity:
    """Who this node is, as read from (or first written to) its state dir."""

    node_id: str
    generation: int
    keys: ClusterKeys
    seeds: tuple[str, ...]
    created: bool  # the node id was made just now
    lock_fd: int | None  # flock on STATE_DIR/lock; None once released
    credentials: Credentials  # this node's own key pair, signed by the authority
    revoked: RevocationList  # node ids shut out of the cluster (STATE_DIR/revoked)
    issuer: str = ""  # a member's: the admin that enrolled it

    def reissue(self, node_id: str) -> Credentials | None:
        """Credentials for a new id of this node (after an identity conflict); None on
        a member, which cannot sign them (it must be enrolled again)."""
        if self.keys.secret is None:
            return None
        authority = Authority.from_secret(self.keys.secret)
        self.credentials = Credentials.signed(authority, node_id, self.credentials.keys)
        return self.credentials

    def release(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def _lock(config: Config) -> int:
    fd = os.open(config.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StartupError(
            f"another swarmd is already running with state dir {config.state_dir}"
        ) from None
    return fd


def _stored(state_dir: Path) -> Joined | None:
    """The cluster secret (an admin) or the membership in the state dir."""
    try:
        secret = load_cluster_secret(state_dir)
        return secret if secret is not None else load_membership(state_dir)
    except ValueError as exc:
        raise StartupError(str(exc)) from None


def _store(state_dir: Path, joined: Joined) -> None:
    """Keep what the token gave, and drop what made this node a member before."""
    if isinstance(joined, bytes):
        store_cluster_secret(state_dir, joined)
        remove_membership(state_dir)
    else:
        store_membership(state_dir, joined)
        (state_dir / "cluster.secret").unlink(missing_ok=True)


async def _cluster(
    config: Config,
    seeds: list[str],
    node: tuple[str, NodeKeys],
    log: logging.Logger,
    stopping: asyncio.Event | None,
) -> Joined:
    """What the join token gives (replacing any other; see :mod:`.joining`), what is
    stored, or a new cluster secret; a token's seeds are added to ``seeds``."""
    stored = _stored(config.state_dir)
    if config.join_token:
        node_id, node_keys = node
        try:
            joined, token_seeds = await secret_from_token(
                config.join_token,
                stored,
                node_id,
                node_keys,
                config.join_timeout_s,
                log,
                stopping,
            )
        except JoinError as exc:
            raise StartupError(str(exc), exc.exit_code) from None
        if joined != stored:
            _store(config.state_dir, joined)
        seeds += [s for s in token_seeds if s not in seeds]
        return joined
    if stored is None:
        stored = create_cluster_secret(config.state_dir)
        log.info(
            "created a new cluster. To add a machine, run `swarmctl join-token` here "
            "and `swarmd --join-token TOKEN` there (machines on this LAN with the same "
            "token find each other by mDNS)"
        )
    return stored


def _credentials(
    state_dir: Path, joined: Joined, node_id: str, node_keys: NodeKeys
) -> tuple[ClusterKeys, Credentials]:
    """The cluster's keys and this node's credentials: signed here by an admin, the
    membership's certificate on a member (which must be for this node id and key)."""
    if isinstance(joined, bytes):
        keys = ClusterKeys.from_secret(joined)
        return keys, Credentials.issue(joined, node_id, node_keys)
    if not joined.certifies(node_id, node_keys.public_z85):
        why = (
            f"the membership in {state_dir} is for node {joined.node_id}, not {node_id}"
            if joined.node_id != node_id
            else f"the membership in {state_dir} does not certify this node's key (node.key)"
        )
        raise StartupError(reenroll_message(state_dir, why), EXIT_TOKEN_REFUSED)
    return joined.keys(), joined.credentials(node_keys)


def secure(state_dir: Path) -> None:
    """The state dir 0700, the files in it 0600 and its directories 0700 (files an
    older version or a person made with other modes included)."""
    os.chmod(state_dir, 0o700)
    for entry in os.scandir(state_dir):
        if entry.is_symlink():
            continue
        if entry.is_dir():
            os.chmod(entry.path, 0o700)
        elif entry.is_file() and entry.stat().st_mode & 0o077:
            os.chmod(entry.path, 0o600)


async def prepare(
    config: Config, log: logging.Logger, stopping: asyncio.Event | None = None
) -> LocalIdentity:
    """Lock the state dir and read (or create) what identifies this node in it, joining
    the cluster of ``config.join_token`` if there is one (enrolling may take until
    ``join_timeout_s``, or until ``stopping`` is set). StartupError (exit 75) if the
    disk will not write it."""
    try:
        return await _prepare(config, log, stopping)
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        raise StartupError(
            f"{describe(exc, config.state_dir)}; free some space (or fix the disk) and "
            "start swarmd again",
            exit_code=EXIT_UNWRITABLE,
        ) from None


async def _prepare(
    config: Config, log: logging.Logger, stopping: asyncio.Event | None
) -> LocalIdentity:
    ensure_state_dir(config.state_dir)
    secure(config.state_dir)
    lock_fd = _lock(config)
    try:
        node_id, created = load_or_create_node_id(config.state_dir)
        generation = next_generation(config.state_dir)
        seeds = list(config.join)
        node_keys = load_or_create_node_keys(config.state_dir)
        joined = await _cluster(config, seeds, (node_id, node_keys), log, stopping)
        keys, credentials = _credentials(config.state_dir, joined, node_id, node_keys)
        revoked = RevocationList(keys.authority, keys.secret, config.state_dir / "revoked")
    except BaseException:
        os.close(lock_fd)
        raise
    log.info(
        "node %s%s, generation %d, cluster %s (%s)",
        node_id,
        " (new)" if created else "",
        generation,
        keys.fingerprint,
        "admin: holds the cluster secret" if keys.admin else "member",
    )
    if node_id in revoked:
        log.error("this node (%s) was revoked from its cluster: peers drop its messages", node_id)
    issuer = joined.issuer if isinstance(joined, Membership) else ""
    return LocalIdentity(
        node_id, generation, keys, tuple(seeds), created, lock_fd, credentials, revoked, issuer
    )
