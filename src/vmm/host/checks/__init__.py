"""``vmm doctor``'s checks, by what they look at: ``system`` (devices, tools, sysctls, the data
dir, the subnet), ``engines`` (KVM and each engine's binaries, from the engine registry) and
``records`` (what the data dir holds: records, TAPs, sockets). Each is a function of a
``probes.Probes`` (what the host shows; tests answer from data) returning one ``Check``;
``vmm.host.doctor`` runs them in report order.
"""

from __future__ import annotations

from vmm.record import FrozenRecord

OK, WARN, FAIL = "ok", "warn", "fail"


class Check(FrozenRecord):
    name: str
    status: str  # ok | warn | fail
    message: str
    hint: str = ""
    # Things ``--fix`` would remove (paths, TAP names), for the leftover checks.
    leftovers: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "status": self.status,
            "message": self.message,
            "hint": self.hint,
            "leftovers": list(self.leftovers),
        }
