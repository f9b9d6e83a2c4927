"""Two real processes whose checkpoint folders differ (each its own disk) resume from the same step, without a hang:
the candidate steps are process 0's, and a step one process lacks is skipped by all."""
from __future__ import annotations

import json
import textwrap

import numpy as np

from multiprocess_harness import run_workers
from ntl_jax.ppo.checkpoint import CheckpointStore

WORKER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from ntl_jax.distributed import multihost
    multihost.initialize()
    import jax
    from ntl_jax.ppo.checkpoint import CheckpointStore

    folders = json.loads(sys.argv[1])
    store = CheckpointStore(folders[jax.process_index()], max_to_keep=None)
    restored = store.restore(None)
    tree, meta, step = restored
    saved_again = store.save(step, tree, meta)  # exists on process 0: every process skips it alike
    agreed = store.agreed_steps()
    store.close()
    print("RESULT " + json.dumps({"process": jax.process_index(), "step": step, "w": np.asarray(tree["w"]).tolist(),
                                  "agreed": agreed, "saved_again": saved_again}), flush=True)
    """
)


def _store_with(folder, steps):
    with CheckpointStore(folder, max_to_keep=None) as store:
        for step in steps:
            store.save(step, {"w": np.full(3, float(step), np.float32)}, {"global_step": step})
        store.wait()


def test_processes_with_different_step_lists_agree_without_hanging(tmp_path):
    # Process 0 sees steps 1, 2, 4; process 1 (a disk that missed the newest saves) sees 1, 2 and a stray 3.
    _store_with(tmp_path / "p0", [1, 2, 4])
    _store_with(tmp_path / "p1", [1, 2, 3])
    folders = [str(tmp_path / "p0"), str(tmp_path / "p1")]
    results = run_workers(WORKER, tmp_path, num_processes=2, devices_per_process=1, timeout_s=300,
                          args=(json.dumps(folders),))
    assert [r["step"] for r in results] == [2, 2]  # 4 is missing on process 1; 3 is not a candidate at all
    assert all(r["w"] == [2.0, 2.0, 2.0] for r in results)
    assert all(r["agreed"] == [1, 2, 4] for r in results)
    assert all(r["saved_again"] is False for r in results)
    # Nothing readable was renamed .corrupt: step 4 is whole on process 0's disk.
    assert sorted(p.name for p in (tmp_path / "p0").iterdir() if p.name[0].isdigit()) == ["1", "2", "4"]


SHARED_WORKER = textwrap.dedent(
    """
    import json, sys
    from ntl_jax.distributed import multihost
    multihost.initialize()
    import jax

    folders = json.loads(sys.argv[1])
    try:
        multihost.check_shared_folder(folders[jax.process_index()], "TrainerConfig.checkpoint_dir")
        error = None
    except ValueError as err:
        error = str(err)
    print("RESULT " + json.dumps({"process": jax.process_index(), "error": error}), flush=True)
    """
)


def test_a_checkpoint_folder_not_every_process_sees_is_refused_on_every_process(tmp_path):
    shared = [str(tmp_path / "shared")] * 2
    results = run_workers(SHARED_WORKER, tmp_path, num_processes=2, devices_per_process=1, timeout_s=300,
                          args=(json.dumps(shared),))
    assert [r["error"] for r in results] == [None, None]
    assert not [p for p in (tmp_path / "shared").iterdir()]  # the marker is removed
    local = [str(tmp_path / "disk0"), str(tmp_path / "disk1")]  # each process its own local disk
    results = run_workers(SHARED_WORKER, tmp_path, num_processes=2, devices_per_process=1, timeout_s=300,
                          args=(json.dumps(local),))
    for r in results:
        assert r["error"].startswith(f"TrainerConfig.checkpoint_dir='{local[r['process']]}' is not one folder shared "
                                     "by all 2 processes")
        assert "allow_unshared_checkpoint_dir = True" in r["error"] and "\n" not in r["error"]
