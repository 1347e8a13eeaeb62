"""How the ensemble stage feeds cached states to its Trainer."""

from __future__ import annotations

import numpy as np
import torch

from medminds_hpc.stages import ensemble


def test_a_batch_of_cached_states_is_fetched_at_once_and_equals_the_rows_one_by_one() -> None:
    rng = np.random.default_rng(0)
    task, domain = rng.standard_normal((20, 8), dtype=np.float32), rng.standard_normal((20, 8), dtype=np.float32)
    rows = [3, 17, 5, 0, 9, 11]
    data = ensemble.StatesDataset(task, domain, [0, 1, 2, 3, 0, 1], rows)
    loader = torch.utils.data.DataLoader(data, batch_size=4, collate_fn=ensemble.states_collator)
    batches = list(loader)
    assert [len(b["labels"]) for b in batches] == [4, 2]
    one_by_one = ensemble.states_collator([data[i] for i in range(4)])
    for key in ("task_states", "domain_states", "labels"):
        assert torch.equal(batches[0][key], one_by_one[key])
    assert torch.equal(batches[1]["task_states"], torch.from_numpy(task[[9, 11]]))
    assert batches[0]["labels"].tolist() == [0, 1, 2, 3]
