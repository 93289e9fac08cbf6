"""CPU seconds spent by everything on the machine but the load generator."""

from __future__ import annotations

import os
import resource


def _machine_cpu_s() -> float:
    with open("/proc/stat") as stat:
        fields = stat.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """Machine CPU time minus this process's own (the client), between start and stop."""

    def __enter__(self) -> CpuMeter:
        self._machine, self._own = _machine_cpu_s(), _own_cpu_s()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = (_machine_cpu_s() - self._machine) - (_own_cpu_s() - self._own)
