"""CAN import benchmark: a synthetic party-bus log written, parsed, decoded, mapped and signed, with rates."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from carvault.vehicle import can_encode
from carvault.vehicle.agent import VehicleAgent
from carvault.vehicle.can import import_can, read_candump
from carvault.vehicle.identity import VehicleIdentity


def bench_can_import(
    frames: int, *, bus_rate: int = 50_000, work_dir: Path | None = None, sign: bool = True
) -> dict[str, Any]:
    """Import a synthetic Tesla party-bus log of ``frames`` frames at ``bus_rate`` frames/s; return the rates.

    The log is a simulated drive encoded by ``can_encode`` (the mapped messages at their real rates)
    plus filler traffic of IDs the DBC does not know, up to ``bus_rate``. Figures: writing the log,
    parsing it, parsing + decoding, the full import to a VSS table, and signing that table into batches.
    """
    own = work_dir is None
    tmp = tempfile.TemporaryDirectory(prefix="carvault-can-bench-") if own else None
    folder = Path(tmp.name) if tmp else Path(work_dir)  # type: ignore[arg-type]
    try:
        log = folder / "bench.candump.log"
        clock = time.perf_counter()
        written = can_encode.write_bench_log(log, frames=frames, bus_rate=bus_rate)
        t_write = time.perf_counter() - clock
        size = log.stat().st_size

        clock = time.perf_counter()
        n_parsed = sum(len(b) for b in read_candump(log))
        t_parse = time.perf_counter() - clock

        # CPU time too: on a shared machine wall time also measures the neighbours.
        cpu = time.process_time()
        result = import_can(log, mapping="tesla_model3_party")
        cpu_import = time.process_time() - cpu
        t_import = sum(result.seconds.values())
        out: dict[str, Any] = {
            "frames": written,
            "bus_rate_frames_per_s": bus_rate,
            "log_seconds": round(written / bus_rate, 1),
            "log_bytes": size,
            "write_frames_per_s": round(written / t_write),
            "parse_frames_per_s": round(n_parsed / t_parse),
            "parse_mb_per_s": round(size / t_parse / 1e6, 1),
            # every frame read, parsed and (the mapped messages') decoded
            "decode_frames_per_s": round(result.frames / (result.seconds["read"] + result.seconds["decode"])),
            "import_frames_per_s": round(result.frames / t_import),
            "import_frames_per_cpu_s": round(result.frames / max(cpu_import, 1e-9)),
            "import_seconds": round(t_import, 2),
            "rows": result.table.num_rows,
            "samples": sum(result.samples.values()),
            "stages_s": {k: round(v, 3) for k, v in result.seconds.items()},
        }
        if sign and result.table.num_rows:
            agent = VehicleAgent(
                VehicleIdentity.create(can_encode.BENCH_VIN, "cn"), folder / "vehicle", "http://127.0.0.1:9"
            )
            clock = time.perf_counter()
            batches = agent.process(result.table) + agent.finish()  # events, consent, signing, spool
            t_sign = time.perf_counter() - clock
            out["sign_batches"] = batches
            out["sign_seconds"] = round(t_sign, 3)
            out["end_to_end_frames_per_s"] = round(result.frames / (t_import + t_sign))
            out["realtime_factor"] = round(written / bus_rate / (t_import + t_sign), 1)
        return out
    finally:
        if tmp:
            tmp.cleanup()
