"""The data order is a pure function of (seed, step): resumable and split across processes."""
import itertools

from cgan.data import StepSampler


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_resume_continues_the_same_order():
    full = take(StepSampler(10, batch_size=4, seed=1), 4 * 7)
    resumed = take(StepSampler(10, batch_size=4, seed=1, start_step=3), 4 * 4)
    assert resumed == full[12:]


def test_each_epoch_is_a_permutation_with_its_own_global_indices():
    order = take(StepSampler(10, batch_size=5, seed=0), 30)
    for epoch in range(3):
        chunk = order[epoch * 10:(epoch + 1) * 10]
        assert sorted(i % 10 for i in chunk) == list(range(10))
        assert all(i // 10 == epoch for i in chunk)
    assert order[:10] != order[10:20]


def test_processes_split_each_global_batch():
    single = take(StepSampler(50, batch_size=6, seed=2), 6 * 4)
    rank0 = take(StepSampler(50, batch_size=3, seed=2, num_processes=2, process_index=0), 3 * 4)
    rank1 = take(StepSampler(50, batch_size=3, seed=2, num_processes=2, process_index=1), 3 * 4)
    for step in range(4):
        assert rank0[step * 3:(step + 1) * 3] + rank1[step * 3:(step + 1) * 3] == single[step * 6:(step + 1) * 6]
