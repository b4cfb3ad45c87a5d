"""JUnit XML for the gate, so CI systems list every threshold as a test: one <testcase> per
threshold per group (classname `qfid.gate.<level>.<metric>`, name = the group), a <failure>
for a broken one, <skipped> when its figure is unavailable; an inconclusive drop passes but
carries its message in <system-out> so it is visible in the CI's test view."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from qfid.evals.gate import GateResult
from qfid.utils.fs import atomic_write_text


def junit_xml(result: GateResult) -> str:
    failures = len(result.failures)
    skipped = sum(c.status == "skipped" for c in result.checks)
    root = ET.Element("testsuites", name="qfid gate", tests=str(len(result.checks)), failures=str(failures))
    suite = ET.SubElement(root, "testsuite", name=f"{result.candidate} vs {result.baseline}", tests=str(len(result.checks)),
                          failures=str(failures), errors="0", skipped=str(skipped))
    for check in result.checks:
        case = ET.SubElement(suite, "testcase", classname=f"qfid.gate.{check.level}.{check.metric}", name=check.group)
        if check.status == "fail":
            ET.SubElement(case, "failure", message=check.message, type=check.metric).text = check.message
        elif check.status == "skipped":
            ET.SubElement(case, "skipped", message=check.message)
        ET.SubElement(case, "system-out").text = check.message
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(result: GateResult, path: str | Path) -> None:
    atomic_write_text(path, junit_xml(result))
