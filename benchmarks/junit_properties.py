"""Print the properties that tests recorded (``record_property``) in a pytest JUnit XML file,
one row per test, as a markdown table.

    python -m pytest tests/models/test_parity.py --junitxml=parity.xml
    python benchmarks/junit_properties.py parity.xml
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET


def rows(path: str) -> list[dict]:
    """[{"test": name, "outcome": passed|failed|skipped, property: value, ...}] of a JUnit file."""
    out = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = ("failed" if case.find("failure") is not None or case.find("error") is not None
                   else "skipped" if case.find("skipped") is not None else "passed")
        row = {"test": f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}",
               "outcome": outcome}
        for prop in case.iter("property"):
            row[prop.get("name")] = prop.get("value")
        out.append(row)
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        table = rows(argv[0])
    except (OSError, ET.ParseError) as err:
        print(f"error: {argv[0]}: {err}", file=sys.stderr)
        return 2
    keys = [k for k in dict.fromkeys(k for r in table for k in r) if k not in ("test", "outcome")]
    print("| test | outcome | " + " | ".join(keys) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in keys) + " |")
    for r in table:
        values = [f"{float(r[k]):.2e}" if k in r else "" for k in keys]
        print(f"| {r['test']} | {r['outcome']} | " + " | ".join(values) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
