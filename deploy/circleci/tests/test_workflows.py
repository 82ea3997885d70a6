"""The job graph of deploy/circleci/config.yml and of the workflow examples in docs/deploy.md.

    pytest deploy/circleci/tests

The CircleCI JSON schema (run by .ci/deploy-checks.sh on both) says a config is well formed; these
checks say a gated workflow works, from how the pieces behave:

* sym/request persists sym/requests.json to the workspace and does not attach the workspace
  first (symopsio/sym-orb src/jobs/request.yml), so that file holds only its own request_slug.
  "If multiple concurrent jobs persist the same filename, then attaching the workspace will
  error", and an attaching job gets the upstream layers "in the order the upstream jobs appear in
  the workflow graph" (CircleCI, workspaces.adoc). So no two sym/request jobs may run
  concurrently, and a job reading sym/requests.json (register_sym_gate, sym/validate) must have,
  as the last sym/request upstream of it, the one with its request_slug.
* Each approval job is reached only through the register_sym_gate of its own hold_job_name, and
  the request's flow_inputs name the same hold job; every deploy job names an approval job
  upstream of it.
"""

import json
import re

import pytest
import yaml

from doc_examples import CONFIG, examples, merged

APPROVAL = "approval"


def workflow_jobs(config):
    """[(workflow name, {job name: (kind, spec)})]: kind is the job (or orb job) invoked."""
    found = []
    for workflow_name, workflow in config["workflows"].items():
        if not isinstance(workflow, dict):
            continue
        jobs = {}
        for entry in workflow["jobs"]:
            kind, spec = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
            spec = spec or {}
            name = spec.get("name", kind)
            assert name not in jobs, "job name %s used twice in %s" % (name, workflow_name)
            jobs[name] = (APPROVAL if spec.get("type") == APPROVAL else kind, spec)
        found.append((workflow_name, jobs))
    return found


def upstream(jobs, name):
    """Every job `name` transitively requires."""
    seen = set()
    todo = list(jobs[name][1].get("requires", []))
    while todo:
        job = todo.pop()
        if isinstance(job, dict):  # requires: [{job: [statuses]}]
            job = next(iter(job))
        if job not in seen:
            assert job in jobs, "%s requires unknown job %s" % (name, job)
            seen.add(job)
            todo.extend(jobs[job][1].get("requires", []))
    return seen


def last_request_upstream(jobs, name):
    """The sym/request whose sym/requests.json layer an attach_workspace in `name` ends with."""
    requests = [j for j in upstream(jobs, name) if jobs[j][0] == "sym/request"]
    assert requests, "%s reads sym/requests.json but no sym/request is upstream of it" % name
    latest = [r for r in requests if not any(r in upstream(jobs, other) for other in requests)]
    assert len(latest) == 1, "%s: the sym/request jobs upstream of it run concurrently: %s" % (name, latest)
    return latest[0]


def flow_input_hold_job(spec):
    inputs = json.loads(re.sub(r"\$\{\w+\}", "x", spec["flow_inputs"]))
    return inputs.get("hold_job_name", "")


def check_gated_workflow(jobs):
    requests = [j for j, (kind, _) in jobs.items() if kind == "sym/request"]
    assert requests, "no sym/request"
    for i, a in enumerate(requests):
        for b in requests[i + 1:]:
            assert a in upstream(jobs, b) or b in upstream(jobs, a), (
                "%s and %s run concurrently: both persist sym/requests.json, so attach_workspace fails" % (a, b)
            )
    slugs = [jobs[r][1]["request_slug"] for r in requests]
    assert len(set(slugs)) == len(slugs), "request_slug reused: %s" % slugs
    by_slug = {jobs[r][1]["request_slug"]: r for r in requests}

    gates = {}
    for name, (kind, spec) in jobs.items():
        if kind in ("register_sym_gate", "sym/validate"):
            request = last_request_upstream(jobs, name)
            assert jobs[request][1]["request_slug"] == spec["request_slug"], (
                "%s reads slug %s but the last sym/request upstream of it is %s (slug %s)"
                % (name, spec["request_slug"], request, jobs[request][1]["request_slug"])
            )
        if kind == "register_sym_gate":
            hold = spec["hold_job_name"]
            assert hold not in gates, "two gates for hold job %s" % hold
            gates[hold] = name
            assert flow_input_hold_job(jobs[by_slug[spec["request_slug"]]][1]) == hold

    approvals = [j for j, (kind, _) in jobs.items() if kind == APPROVAL]
    assert sorted(approvals) == sorted(gates), "approval jobs %s, gates for %s" % (approvals, sorted(gates))
    for approval in approvals:
        assert gates[approval] in jobs[approval][1]["requires"], "%s does not require its gate" % approval
    for name, (kind, spec) in jobs.items():
        if kind == "deploy":
            assert spec["hold_job_name"] in upstream(jobs, name), "%s is not behind %s" % (name, spec["hold_job_name"])
            validates = [j for j in upstream(jobs, name) if jobs[j][0] == "sym/validate"]
            assert any(jobs[v][1]["request_slug"] == jobs[gates[spec["hold_job_name"]]][1]["request_slug"]
                       for v in validates), "%s: no sym/validate of its own request upstream" % name


def test_the_kits_config_is_a_working_gated_workflow():
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    ((_, jobs),) = workflow_jobs(config)
    check_gated_workflow(jobs)


def test_the_docs_have_the_two_gate_example():
    assert "two-gates" in examples()


@pytest.mark.parametrize("name", sorted(examples()))
def test_each_docs_example_is_a_working_gated_workflow(name):
    ((_, jobs),) = workflow_jobs(merged(examples()[name]))
    check_gated_workflow(jobs)


def test_the_two_gate_example_runs_its_requests_one_after_the_other():
    ((_, jobs),) = workflow_jobs(merged(examples()["two-gates"]))
    requests = [j for j, (kind, _) in jobs.items() if kind == "sym/request"]
    assert len(requests) == 2
    assert len([j for j, (kind, _) in jobs.items() if kind == APPROVAL]) == 2


def test_concurrent_requests_are_caught():
    """The check itself: the naive two-gate workflow (both requests after build) fails it."""
    naive = yaml.safe_load(examples()["two-gates"])
    for entry in naive["workflows"]["deploy-with-two-gates"]["jobs"]:
        if isinstance(entry, dict) and "sym/request" in entry:
            entry["sym/request"]["requires"] = ["build"]
    ((_, jobs),) = workflow_jobs(merged(yaml.safe_dump(naive)))
    with pytest.raises(AssertionError, match="run concurrently"):
        check_gated_workflow(jobs)
