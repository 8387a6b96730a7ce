"""proxy.leases.rfc3339 reads a time as containerd does: Go's ``time.Parse(time.RFC3339, v)``.

containerd 2 (core/metadata/gc.go) parses ``containerd.io/gc.expire`` on leases and images and
``containerd.io/gc.cond.value-usedat`` on snapshots so, and ignores a label Go will not parse:
the object keeps its place. A looser reader would delete what containerd keeps.

Go's Parse with that layout first tries a strict RFC 3339 path and, where that fails, the
general layout parser, which is looser (a one-digit hour, ``,`` before the fraction, a zone
hour up to 24 and minute up to 60). The table is Go 1.23.5's answer to each input (Unix
seconds and nanoseconds, or None for an error), recorded from time.Parse itself; containerd 2
builds with Go 1.22 to 1.26, and the current Go source reads these as 1.23 does. Older Go
read some of them otherwise (noted per row); we follow 1.23+, whose differences only refuse.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from moorage.proxy import gc
from moorage.proxy.leases import LeaseStore, rfc3339
from test_gc_plan import Fake, collector, d, image_graph

GO_1_23: list[tuple[str, tuple[int, int] | None]] = [
    ("2001-01-01T00:00:00Z", (978307200, 0)),
    ("2001-01-01T00:00:00+00:00", (978307200, 0)),
    ("2001-01-01T00:00:00-00:00", (978307200, 0)),
    ("2001-01-01T01:00:00+01:00", (978307200, 0)),
    ("2000-12-31T19:00:00-05:00", (978307200, 0)),
    # what Python's datetime.fromisoformat took and containerd does not
    ("2001-01-01", None),
    ("2001-01-01T00:00:00", None),  # no zone (fromisoformat: local time)
    ("2001-01-01 00:00:00Z", None),
    ("20010101T000000Z", None),
    ("2001-01-01T00:00Z", None),
    ("2001-01-01T00:00:00+0000", None),
    ("2001-01-01T00:00:00+00", None),
    ("2001-01-01t00:00:00Z", None),
    ("2001-01-01T00:00:00z", None),
    ("2001-01-01T00:00:00UTC", None),
    ("2001-01-01T00:00:00 Z", None),
    ("2001-01-01T00:00:00Z ", None),
    (" 2001-01-01T00:00:00Z", None),
    ("2001-01-01T00:00:00Z\n", None),
    ("", None),
    ("\u0662\u0660\u0660\u0661-01-01T00:00:00Z", None),  # Arabic-Indic digits
    ("2001-01-01T00:00:00.\u0665Z", None),
    ("2001-01-01T00:00:00+0\u0661:00", None),
    ("+2001-01-01T00:00:00Z", None),
    ("-2001-01-01T00:00:00Z", None),
    # fractions: after the seconds even without Nano in the layout; "." or ","; past nine digits cut
    ("2001-01-01T00:00:00.5Z", (978307200, 500_000_000)),
    ("2001-01-01T00:00:00,5Z", (978307200, 500_000_000)),
    ("2001-01-01T00:00:00.Z", None),
    ("2001-01-01T00:00:00.123456789Z", (978307200, 123_456_789)),
    ("2001-01-01T00:00:00.1234567899999Z", (978307200, 123_456_789)),
    ("2001-01-01T00:00:00.000000001Z", (978307200, 1)),
    ("2001-01-01T00:00:00.5+01:00", (978303600, 500_000_000)),
    ("2001-01-01T00:00:.5Z", None),  # Go 1.19: (978307200, 500000000)
    ("2001-01-01T00:00:,5Z", None),  # Go 1.19: (978307200, 500000000)
    # field widths: the hour alone may have one digit
    ("2001-01-01T0:00:00Z", (978307200, 0)),
    ("2001-01-01T9:30:00+01:00", (978337800, 0)),
    ("2001-01-01T000:00:00Z", None),
    ("2001-01-01T00:0:00Z", None),
    ("2001-01-01T00:00:0Z", None),
    ("2001-1-01T00:00:00Z", None),
    ("2001-01-1T00:00:00Z", None),
    ("01-01-01T00:00:00Z", None),
    ("02001-01-01T00:00:00Z", None),
    # ranges: years 0000-9999 (proleptic Gregorian, year 0 a leap year), no hour 24, no leap second
    ("0000-01-01T00:00:00Z", (-62167219200, 0)),
    ("0000-02-29T00:00:00Z", (-62162121600, 0)),
    ("9999-12-31T23:59:59Z", (253402300799, 0)),
    ("1969-12-31T23:59:59Z", (-1, 0)),
    ("2001-01-01T24:00:00Z", None),
    ("2001-01-01T23:60:00Z", None),
    ("2001-01-01T23:59:60Z", None),
    ("2001-00-01T00:00:00Z", None),
    ("2001-13-01T00:00:00Z", None),
    ("2001-01-00T00:00:00Z", None),
    ("2001-01-32T00:00:00Z", None),
    ("2001-02-29T00:00:00Z", None),
    ("2000-02-29T00:00:00Z", (951782400, 0)),
    ("1900-02-29T00:00:00Z", None),
    ("2001-04-31T00:00:00Z", None),
    # zones: the fallback takes an hour up to 24 and a minute up to 60
    ("2001-01-01T00:00:00+23:59", (978220860, 0)),
    ("2001-01-01T00:00:00+24:00", (978220800, 0)),
    ("2001-01-01T00:00:00-24:00", (978393600, 0)),
    ("2001-01-01T00:00:00+00:60", (978303600, 0)),
    ("2001-01-01T00:00:00+24:60", (978217200, 0)),
    ("2001-01-01T00:00:00+25:00", None),  # Go 1.19 and 1.22: (978217200, 0)
    ("2001-01-01T00:00:00+00:61", None),  # Go 1.19 and 1.22: (978303540, 0)
    ("2001-01-01T00:00:00+99:99", None),  # Go 1.19 and 1.22: (977944860, 0)
    ("2001-01-01T00:00:00+-0:+0", None),  # Go 1.19: (978307200, 0)
    ("2001-01-01T00:00:00+01:-1", None),  # Go 1.19: (978303660, 0)
    ("2001-01-01T00:00:00+1:00", None),
    ("2001-01-01T00:00:00*01:00", None),
    ("2001-01-01T00:00:00+01:00Z", None),
    ("2001-01-01T00:00:00Z+01:00", None),
]


@pytest.mark.parametrize(("value", "go"), GO_1_23)
def test_rfc3339_reads_as_go_time_parse(value: str, go: tuple[int, int] | None) -> None:
    assert rfc3339(value) == (None if go is None else go[0] + go[1] / 1e9)


LOOSE = ["2001-01-01", "2001-01-01T00:00:00", "2001-01-01 00:00:00Z", "20010101T000000Z"]


def test_a_lease_whose_expiry_go_cannot_read_is_kept(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "leases.db")
    for i, value in enumerate(LOOSE):
        store.create("default", f"loose{i}", {"containerd.io/gc.expire": value})
    store.create("default", "past", {"containerd.io/gc.expire": "2001-01-01T00:00:00Z"})
    assert store.expire() == [("default", "past")]
    store.close()


async def test_an_image_whose_expiry_go_cannot_read_is_kept(tmp_path: Path) -> None:
    fake = Fake()
    image_graph(fake)
    fake.images["old"] = (d(1), {"containerd.io/gc.expire": "2001-01-01T00:00:00,5+24:00"})
    for i, value in enumerate(LOOSE):
        fake.images[f"loose{i}"] = (d(1), {"containerd.io/gc.expire": value})
    freed = await collector(fake, tmp_path).collect()
    assert freed.images == {"default": ["old"]}
    assert set(fake.images) == {f"loose{i}" for i in range(len(LOOSE))}


def test_a_used_at_go_cannot_read_is_ignored() -> None:
    labels = {f"{gc.USED_AT}.{i}": value for i, value in enumerate(LOOSE)}
    assert gc.used_at(labels) == []
    assert gc.used_at({**labels, gc.USED_AT: "2001-01-01T0:00:00Z"}) == [978307200.0]
