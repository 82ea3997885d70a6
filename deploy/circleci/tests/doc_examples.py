"""The CircleCI workflow examples in docs/deploy.md, as complete configurations.

A fenced ```yaml block right after a line `<!-- circleci-workflow-example: NAME -->` holds a
`workflows:` section. It is merged into deploy/circleci/config.yml (its orbs, executors and jobs,
the workflows replaced), so the example is checked exactly like the kit's own config:

    python deploy/circleci/tests/doc_examples.py OUT_DIR   # writes OUT_DIR/<name>.yml

.ci/deploy-checks.sh validates each written file with the same CircleCI JSON schema as
config.yml (check-jsonschema --builtin-schema vendor.circle-ci); test_workflows.py checks the
examples' job graph.
"""

import re
import sys
from pathlib import Path

import yaml

CIRCLECI_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = CIRCLECI_DIR.parent.parent
CONFIG = CIRCLECI_DIR / "config.yml"
DOC = REPO_ROOT / "docs" / "deploy.md"
MARKER = re.compile(r"^<!-- circleci-workflow-example: ([\w-]+) -->\n```yaml\n(.*?)^```$", re.M | re.S)


def examples():
    """{name: workflows section text} of every marked example in docs/deploy.md."""
    found = {}
    for match in MARKER.finditer(DOC.read_text(encoding="utf-8")):
        found[match.group(1)] = match.group(2)
    return found


def merged(workflows_text):
    """config.yml with its workflows replaced by the example's."""
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    example = yaml.safe_load(workflows_text)
    if set(example) != {"workflows"}:
        raise ValueError("a workflow example holds a workflows: section only, not %s" % sorted(example))
    config["workflows"] = example["workflows"]
    return config


def main(out_dir):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    found = examples()
    if not found:
        print("no circleci-workflow-example blocks in %s" % DOC, file=sys.stderr)
        return 1
    for name, text in sorted(found.items()):
        path = out / ("%s.yml" % name)
        path.write_text(yaml.safe_dump(merged(text), sort_keys=False, width=1000), encoding="utf-8")
        print("%s: %s" % (name, path))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
