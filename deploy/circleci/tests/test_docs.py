"""What README.md and docs/ say about deploy/circleci/config.yml agrees with it.

    pytest deploy/circleci/tests

* The pipeline order written out in README.md and docs/deploy.md ("`sym/request` →
  `register_sym_gate` → …") is the order of the config's workflow, every job included.
* The orb version the docs say is pinned is the one config.yml pins.
"""

import re

import yaml

from doc_examples import CONFIG, DOC, REPO_ROOT

README = REPO_ROOT / "README.md"
CONTRACTS = REPO_ROOT / "docs" / "external-contracts.md"


def workflow_order():
    """The config workflow's jobs, each after everything it requires (ties kept in file order)."""
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    ((_, workflow),) = [(n, w) for n, w in config["workflows"].items() if isinstance(w, dict)]
    jobs = []
    requires = {}
    for entry in workflow["jobs"]:
        name, spec = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
        jobs.append(name)
        requires[name] = set((spec or {}).get("requires", []))
    order = []
    while len(order) < len(jobs):
        ready = [j for j in jobs if j not in order and requires[j] <= set(order)]
        assert ready, "a cycle in requires"
        order.append(ready[0])
    return order


def written_orders(text):
    """Every chain of back-quoted names joined by → in the text (one per sentence)."""
    flat = re.sub(r"\s+", " ", text)
    return [re.findall(r"`([^`]+)`", chain) for chain in re.findall(r"(`[^`]+`(?: → `[^`]+`)+)", flat)]


def test_readme_and_deploy_md_write_the_pipeline_in_the_configs_order():
    order = workflow_order()
    assert order[:5] == ["build", "sym/request", "register_sym_gate", "wait_for_sym_approval", "sym/validate"]
    for path in (README, DOC):
        chains = [c for c in written_orders(path.read_text(encoding="utf-8")) if "register_sym_gate" in c]
        assert chains, "%s does not write the pipeline out" % path.name
        for chain in chains:
            positions = [order.index(job) for job in chain if job in order]
            assert positions == sorted(positions), "%s: %s" % (path.name, chain)
            assert "sym/request" in chain and "wait_for_sym_approval" in chain, chain
            assert all(job in chain for job in order[order.index(chain[0]):order.index("wait_for_sym_approval")]), (
                "%s leaves a job out before the hold: %s" % (path.name, chain)
            )


def test_the_docs_name_the_pinned_orb_version():
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    pinned = config["orbs"]["sym"]
    text = CONTRACTS.read_text(encoding="utf-8")
    claims = re.findall(r"`(sym/sym@[^`]+)`\**\s*\(?(?:is )?pinned", text) + re.findall(r"pins `(sym/sym@[^`]+)`", text)
    assert claims, "docs/external-contracts.md says nothing about the pinned orb"
    for claim in claims:
        assert claim == pinned, "the docs say %s is pinned, config.yml pins %s" % (claim, pinned)
