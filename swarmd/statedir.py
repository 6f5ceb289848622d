"""The state dir at start-up: locked for this process, with the node's id, generation,
cluster secret and seeds resolved (from the dir, and from a join token if one is given).

One function, :func:`prepare`, returns a :class:`LocalIdentity`; the node keeps it for
as long as it runs and releases the lock when it stops.
"""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass

from .config import Config
from .credentials import Credentials, RevocationList, load_or_create_node_keys
from .identity import (
    ClusterKeys,
    create_cluster_secret,
    ensure_state_dir,
    load_cluster_secret,
    load_or_create_node_id,
    next_generation,
    parse_join_token,
    store_cluster_secret,
)


class StartupError(RuntimeError):
    """A reason the node cannot start that the operator can fix; exit 1, no traceback."""


@dataclass
class LocalIdentity:
    """Who this node is, as read from (or first written to) its state dir."""

    node_id: str
    generation: int
    keys: ClusterKeys
    seeds: tuple[str, ...]
    created: bool  # the node id was made just now
    lock_fd: int | None  # flock on STATE_DIR/lock; None once released
    credentials: Credentials  # this node's own key pair, vouched for by the secret
    revoked: RevocationList  # node ids shut out of the cluster (STATE_DIR/revoked)

    def reissue(self, node_id: str) -> Credentials:
        """Credentials for a new id of this node (after an identity conflict)."""
        self.credentials = Credentials.issue(self.keys.secret, node_id, self.credentials.keys)
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


def _cluster_secret(config: Config, seeds: list[str], log: logging.Logger) -> bytes:
    """The secret of the join token (replacing any other), the stored one, or a new one;
    a token's seeds are added to ``seeds``."""
    secret = load_cluster_secret(config.state_dir)
    if config.join_token:
        try:
            token_secret, token_seeds = parse_join_token(config.join_token)
        except ValueError as exc:
            raise StartupError(f"--join-token: {exc}") from None
        if secret is not None and secret != token_secret:
            log.warning("the join token names another cluster: leaving the old one")
        store_cluster_secret(config.state_dir, token_secret)
        seeds += [s for s in token_seeds if s not in seeds]
        log.info("joined the cluster of the token; seeds %s", ", ".join(token_seeds))
        return token_secret
    if secret is None:
        secret = create_cluster_secret(config.state_dir)
        log.info(
            "created a new cluster. To add a machine, run `swarmctl join-token` here "
            "and `swarmd --join-token TOKEN` there (machines on this LAN with the same "
            "token find each other by mDNS)"
        )
    return secret


def prepare(config: Config, log: logging.Logger) -> LocalIdentity:
    """Lock the state dir and read (or create) what identifies this node in it."""
    ensure_state_dir(config.state_dir)
    lock_fd = _lock(config)
    try:
        node_id, created = load_or_create_node_id(config.state_dir)
        generation = next_generation(config.state_dir)
        seeds = list(config.join)
        keys = ClusterKeys.from_secret(_cluster_secret(config, seeds, log))
        node_keys = load_or_create_node_keys(config.state_dir)
        credentials = Credentials.issue(keys.secret, node_id, node_keys)
        revoked = RevocationList(keys.secret, config.state_dir / "revoked")
    except BaseException:
        os.close(lock_fd)
        raise
    log.info(
        "node %s%s, generation %d, cluster %s",
        node_id,
        " (new)" if created else "",
        generation,
        keys.fingerprint,
    )
    if node_id in revoked:
        log.error("this node (%s) was revoked from its cluster: peers drop its messages", node_id)
    return LocalIdentity(
        node_id, generation, keys, tuple(seeds), created, lock_fd, credentials, revoked
    )
