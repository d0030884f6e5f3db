"""The ring's parts that need no model: block partitions and their balance (hand-computed cases),
the packed messages, the ops' metadata, and the error that names a failed rank. The ring itself, on
real gloo ranks, is ``test_stream_ranks.py``."""

from __future__ import annotations

import pytest
import torch

from accelframe.errors import ConfigError
from accelframe_adapters.parallel import partition as part
from accelframe_adapters.parallel.comm import RankFailedError, pack, unpack
from accelframe_adapters.parallel.ring import Messages


def test_the_even_partition_gives_the_remainder_to_the_last_ranks():
    assert part.even_partition(4, 2) == (0, 2, 4)
    assert part.even_partition(5, 2) == (0, 2, 5)
    assert part.even_partition(7, 3) == (0, 2, 4, 7)


def test_balance_minimises_the_slowest_stage_and_moves_the_fewest_blocks():
    # rank 0 decodes (overhead 2): it should keep one block; the 3 others go to rank 1
    assert part.balance([1.0] * 4, [2.0, 0.0], 2) == (0, 1, 4)
    # no overheads, equal blocks: the even split, whatever the current partition
    assert part.balance([1.0] * 4, [0.0, 0.0], 2, current=(0, 3, 4)) == (0, 2, 4)
    # a tie between (0, 2, 4) and (0, 3, 4): the one nearest the current partition stays
    assert part.balance([1.0, 1.0, 0.0, 2.0], [0.0, 0.0], 2, current=(0, 3, 4)) == (0, 3, 4)
    assert part.period((0, 1, 4), [1.0] * 4, [2.0, 0.0]) == 3.0


def test_worth_moving_needs_the_period_to_shrink_by_min_gain():
    times, over = [1.0] * 4, [0.0, 0.0]
    assert part.worth_moving((0, 1, 4), (0, 2, 4), times, over, 0.05)  # period 3 -> 2
    assert not part.worth_moving((0, 2, 4), (0, 2, 4), times, over, 0.0)
    assert not part.worth_moving((0, 1, 4), (0, 2, 4), [1.0, 1.0, 1.0, 1.0], [0.0, 0.0], 0.5)


def test_moved_blocks_name_each_block_its_old_and_new_owner():
    assert part.moved_blocks((0, 1, 4), (0, 3, 4)) == [(1, 1, 0), (2, 1, 0)]
    assert part.moved_blocks((0, 2, 4), (0, 2, 4)) == []


@pytest.mark.parametrize("bounds", [(0, 4), (1, 2, 4), (0, 2, 2, 4), (0, 3, 2, 4), (0, 2, 5)])
def test_a_bad_partition_is_a_config_error(bounds):
    with pytest.raises(ConfigError) as exc:
        part.check_partition(bounds, 4, 3 if len(bounds) == 4 else 2)
    assert exc.value.field == "partition"


def test_messages_pack_into_one_buffer_and_back():
    parts = [torch.arange(5, dtype=torch.float64), torch.randn(7), torch.randn(3).to(torch.bfloat16)]
    back = unpack(pack(parts), [(t.numel(), t.dtype) for t in parts])
    assert all(torch.equal(a, b) for a, b in zip(parts, back))


class _Loop:
    """A link that hands every message back in order (one process)."""

    def __init__(self) -> None:
        self.box: list[list[torch.Tensor]] = []

    def send(self, tensors, dst, what, channel="forward"):
        self.box.append([t.clone() for t in tensors])

    def recv(self, specs, src, what, channel="forward"):
        return specs

    def wait(self, specs):
        got = self.box.pop(0)
        assert [(t.numel(), t.dtype) for t in got] == list(specs), "a message of another shape"
        return got


def test_an_op_travels_as_header_metadata_and_tensors():
    msgs = Messages(_Loop(), torch.device("cpu"))
    x = torch.randn(2, 3, 4)
    msgs.send(1, 4, {"streams": [0, 1], "sigmas": [0.5, 0.25]}, [x, x.half()])
    op, meta, tensors = msgs.recv(0)
    assert op == 4 and meta["streams"] == [0, 1] and meta["sigmas"] == [0.5, 0.25]
    assert torch.equal(tensors[0], x) and torch.equal(tensors[1], x.half()) and tensors[1].shape == (2, 3, 4)
    msgs.send(1, 2, {"evict": []})
    assert msgs.recv(0)[:2] == (2, {"evict": [], "tensors": []})


def test_rank_failed_error_names_the_rank():
    err = RankFailedError(2, seen_by=1, during="waiting for a rows pass", cause="Connection closed by peer")
    assert "pipeline rank 2" in str(err) and "rank 1" in str(err)
