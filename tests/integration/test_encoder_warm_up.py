"""The encoders' warm-up: what the first `encode` of a process would load on demand is loaded by
`warm_up` (the worker runs it on its first tick), so the first study's results do not wait."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_warm_up_loads_highdicoms_tables_and_the_fonts() -> None:
    # a fresh interpreter: the test process may have loaded them already
    script = textwrap.dedent(
        """
        import time
        from highdicom import _standard_utils as s
        from classifier.results.encode import warm_up
        tables = (s.get_sop_class_iod_map, s.get_iod_module_map, s.get_module_attribute_map)
        assert all(t.cache_info().currsize == 0 for t in tables)
        started = time.monotonic()
        warm_up()
        print(f"warm-up {time.monotonic() - started:.2f} s")
        assert all(t.cache_info().currsize == 1 for t in tables)
        from matplotlib import font_manager
        assert font_manager.fontManager.ttflist
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    print(run.stdout)
