"""Notice when the Ray cluster a server joined is gone, so the server exits instead of lingering.

`ray stop` (and so `ray down`) ends Ray's processes but not the drivers attached to them: a
`rayruns serve --address auto` would go on holding its port with nothing behind it. The watch
connects to the cluster's GCS port; a few misses in a row mean the cluster is gone.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable

log = logging.getLogger("rayruns")


class ClusterWatch:
    def __init__(
        self,
        gcs_address: str,
        on_gone: Callable[[], None],
        interval_s: float = 1.0,
        misses: int = 5,
    ) -> None:
        host, _, port = gcs_address.rpartition(":")
        self._addr = (host.strip("[]"), int(port))
        self._gcs_address = gcs_address
        self._on_gone = on_gone
        self._interval_s = interval_s
        self._misses = misses
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rayruns-cluster-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _reachable(self) -> bool:
        try:
            with socket.create_connection(self._addr, timeout=2.0):
                return True
        except OSError:
            return False

    def _run(self) -> None:
        missed = 0
        while not self._stopped.wait(self._interval_s):
            missed = 0 if self._reachable() else missed + 1
            if missed >= self._misses:
                log.error("the Ray cluster at %s is gone: stopping", self._gcs_address)
                self._on_gone()
                return
