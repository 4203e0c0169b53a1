"""The matching-aware negatives, vectorised over the batch, draw exactly what the per-sample loops drew."""
import pytest
import torch

from cgan.train.losses import mismatched_attributes, mismatched_prompt_index


def loop_prompt_index(captions, generator):  # the per-sample loop these replaced, as the oracle
    batch = len(captions)
    index, valid = torch.zeros(batch, dtype=torch.long), torch.zeros(batch, dtype=torch.bool)
    order = torch.randperm(batch, generator=generator).tolist()
    for i in range(batch):
        for j in order[i:] + order[:i]:
            if captions[j] != captions[i]:
                index[i], valid[i] = j, True
                break
    return index, valid


def loop_attributes(attr_index, attr_value, attr_present, num_values, generator):
    batch, num_attrs = attr_index.shape
    new_index, new_value = attr_index.clone(), attr_value.clone()
    valid = torch.zeros(batch, dtype=torch.bool)
    changeable = [a for a in range(num_attrs) if num_values[a] != 1]
    rand = torch.rand(batch, 3, generator=generator)
    for i in range(batch):
        options = [a for a in changeable if bool(attr_present[i, a])]
        if not options:
            continue
        a = options[int(rand[i, 0] * len(options)) % len(options)]
        if num_values[a] >= 2:
            shift = 1 + int(rand[i, 1] * (num_values[a] - 1)) % (num_values[a] - 1)
            new_index[i, a] = (attr_index[i, a] + shift) % num_values[a]
        else:
            new_value[i, a] = (float(attr_value[i, a]) + 0.25 + 0.5 * float(rand[i, 2])) % 1.0
        valid[i] = True
    return new_index, new_value, valid


@pytest.mark.parametrize("seed", range(20))
def test_prompt_partners_are_the_loops(seed):
    gen = torch.Generator().manual_seed(seed)
    batch = int(torch.randint(1, 40, (1,), generator=gen))
    words = ["a", "b", "c"][: int(torch.randint(1, 4, (1,), generator=gen))]  # many duplicates, some all-equal
    captions = [words[int(torch.randint(len(words), (1,), generator=gen))] for _ in range(batch)]
    got = mismatched_prompt_index(captions, torch.Generator().manual_seed(seed))
    expected = loop_prompt_index(captions, torch.Generator().manual_seed(seed))
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@pytest.mark.parametrize("seed", range(20))
def test_attribute_changes_are_the_loops(seed):
    gen = torch.Generator().manual_seed(seed)
    num_values = [3, 0, 1, 2, 0, 5]  # categorical, continuous, a single value (never changed), ...
    batch = 64
    attr_index = torch.stack([torch.randint(max(n, 1), (batch,), generator=gen) for n in num_values], dim=1)
    attr_value = torch.rand(batch, len(num_values), generator=gen)
    attr_present = torch.rand(batch, len(num_values), generator=gen) < 0.4  # some rows have none
    got = mismatched_attributes(attr_index, attr_value, attr_present, num_values, torch.Generator().manual_seed(seed))
    expected = loop_attributes(attr_index, attr_value, attr_present, num_values, torch.Generator().manual_seed(seed))
    assert not expected[2].all() and expected[2].any()
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and torch.equal(g, e)


def test_no_attributes_means_no_attribute_negatives():
    empty = torch.zeros(5, 0)
    for got, expected in zip(mismatched_attributes(empty.long(), empty, empty.bool(), [], torch.Generator()),
                             loop_attributes(empty.long(), empty, empty.bool(), [], torch.Generator())):
        assert got.shape == expected.shape and torch.equal(got, expected)
