"""impl.py as Sym's flow runtime runs it: compiled by RestrictedPython, executed under its guards,
against the published sym-sdk.

    pytest deploy/sym/tests/test_sandbox.py

* The file compiles with zero RestrictedPython errors and imports nothing but sym.sdk...,
  requests, json and datetime (no other import is even attempted).
* Every handler in the file runs in the sandbox, on events built from the SDK's abstract classes
  (sym_runtime.py); their names are hook and reducer names Sym knows.
* Delivery retries are tested against real local HTTP servers: 503 + Retry-After, 429 +
  Retry-After, 500, a closed port, a final 4xx, a Retry-After past the budget; a failed approve
  tells the approver in Slack that the deploy was NOT released and which path still releases it;
  a failed request event says in the thread that the reconciler cannot recover this request.
* End to end (tests marked e2e): the sandboxed hooks against the real service binary and its
  built-in fake CircleCI; the hold job must be approved there (its calls file).
"""

import ast
import json
import socket
import time
import uuid

import pytest
from RestrictedPython import safe_builtins
from sym.sdk.notifications import Notification
from sym.sdk.request_destination import SlackChannelName
from sym.sdk.request_permission import PermissionLevel, RequestPermission
from sym.sdk.templates import ApprovalTemplateStep

import sandbox
from conftest import SYM_DIR, make_event
from service import approver_service, wait_until  # noqa: F401 - approver_service is a fixture

HANDLERS = {
    "get_permissions": "reducer",
    "get_request_notifications": "reducer",
    "on_request": "hook",
    "after_request": "hook",
    "after_approve": "hook",
    "after_deny": "hook",
}
# Reducers Sym calls for an approval flow: docs.symops.com/docs/migrating-from-get_approvers
# (get_permissions and get_request_notifications replace the deprecated get_approvers).
KNOWN_REDUCERS = {"get_permissions", "get_request_notifications"}
IMPORTED = ["datetime", "json", "requests", "sym.sdk.annotations", "sym.sdk.integrations",
            "sym.sdk.notifications", "sym.sdk.request_permission", "sym.sdk.templates"]


@pytest.fixture
def impl(runtime):
    """A fresh sandboxed impl.py with short back-offs (the budgets are set per test)."""
    module = sandbox.load()
    module.globals["DELIVERY_BACKOFF_SECONDS"] = 0.05
    module.globals["DELIVERY_BACKOFF_MAX_SECONDS"] = 0.2
    return module


# ------------------------------------------------------------------------------------------
# What the runtime allows
# ------------------------------------------------------------------------------------------


def test_restricted_python_compiles_impl_with_zero_errors():
    result = sandbox.compile_impl()
    assert result.errors == ()
    assert result.code is not None


def test_imports_are_only_sym_sdk_requests_json_datetime_and_never_guarded_by_try():
    tree = ast.parse((SYM_DIR / "impl.py").read_text(encoding="utf-8"))
    imported = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.append(node.module)
        if isinstance(node, ast.Try):
            inner = [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
            assert inner == [], "an import inside try: %s" % ast.dump(inner[0])
    assert sorted(imported) == sorted(IMPORTED)
    assert all(sandbox.import_allowed(name) for name in imported)


def test_impl_uses_no_construct_the_bare_sandbox_lacks():
    """No class (needs __metaclass__), augmented assignment (_inplacevar_), print (_print_), and
    every name it reads is bound in the file or one of RestrictedPython's safe_builtins."""
    tree = ast.parse((SYM_DIR / "impl.py").read_text(encoding="utf-8"))
    bound = set()
    for node in ast.walk(tree):
        assert not isinstance(node, (ast.ClassDef, ast.AugAssign, ast.Global, ast.Nonlocal)), ast.dump(node)
        if isinstance(node, (ast.FunctionDef, ast.Lambda)):
            if isinstance(node, ast.FunctionDef):
                bound.add(node.name)
            bound.update(a.arg for a in node.args.args + node.args.kwonlyargs)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    loaded = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    missing = sorted(loaded - bound - set(safe_builtins))
    assert missing == [], "names neither defined in impl.py nor in safe_builtins: %s" % missing
    assert "print" not in loaded


def test_loading_in_the_sandbox_asks_only_for_allowed_modules(impl):
    assert impl.imports.refused == []
    assert set(impl.imports.asked) == set(IMPORTED)


def test_every_handler_in_the_file_is_exercised_here():
    assert sandbox.handlers() == HANDLERS


def test_handler_names_are_ones_sym_calls():
    """Hooks are on_/after_ plus a step of the approval template (sym-sdk's ApprovalTemplateStep;
    the SDK's hook docstring); reducers are the documented ones."""
    steps = {step.value for step in ApprovalTemplateStep}
    for name, kind in sandbox.handlers().items():
        if kind == "hook":
            prefix, _, step = name.partition("_")
            assert prefix in ("on", "after") and step in steps, name
        else:
            assert name in KNOWN_REDUCERS, name


# ------------------------------------------------------------------------------------------
# Handlers that need no service
# ------------------------------------------------------------------------------------------


def test_sandboxed_get_permissions_lets_members_approve_but_never_the_requester(impl):
    permission = impl.get_permissions(make_event())
    assert isinstance(permission, RequestPermission)
    assert permission.allow_self_approval is False
    assert permission.approve_deny == PermissionLevel.MEMBER
    assert permission.webapp_view == PermissionLevel.ADMIN


def test_sandboxed_get_request_notifications_routes_to_the_configured_channel(impl):
    (notification,) = impl.get_request_notifications(make_event())
    assert isinstance(notification, Notification)
    (destination,) = notification.destinations
    assert isinstance(destination, SlackChannelName) and destination.channel_name == "#ci-approvals"
    other = impl.get_request_notifications(make_event(flow_vars={"approvals_channel": "#deploys"}))
    assert other[0].destinations[0].channel_name == "#deploys"


def test_sandboxed_on_request_refuses_what_could_never_release_a_hold_job(impl):
    assert impl.on_request(make_event()) is None
    assert impl.on_request(make_event(hold_job_name="deploy_gate_staging")) is None
    assert impl.on_request(make_event(hold_job_name="")) is None
    refused = impl.on_request(make_event(workflow_id="not-a-uuid"))
    assert refused.name == "deny" and "workflow_id" in refused.kwargs["reason"]
    refused = impl.on_request(make_event(hold_job_name="two\nlines"))
    assert refused.name == "deny" and "control character" in refused.kwargs["reason"]
    refused = impl.on_request(make_event(hold_job_name="x" * 129))
    assert refused.name == "deny" and "longer than 128" in refused.kwargs["reason"]


def test_sandboxed_after_deny_skips_requests_on_request_refused(impl, scripted_server):
    server = scripted_server([202])
    impl.after_deny(make_event(approver_url=server.url, workflow_id="not-a-uuid", event_type="deny"))
    assert server.requests == []


def test_sandboxed_after_request_skips_requests_on_request_refused(impl, scripted_server, runtime):
    server = scripted_server([200])
    impl.after_request(make_event(approver_url=server.url, hold_job_name="a\tb", event_type="request"))
    assert server.requests == [] and runtime.sent == []


# ------------------------------------------------------------------------------------------
# Delivery: retries against real local HTTP servers, and the Slack message on failure
# ------------------------------------------------------------------------------------------


def not_released_messages(runtime):
    return [m for m in runtime.sent if "Deploy NOT released" in m["text"]]


def test_503_with_retry_after_is_retried_after_that_many_seconds(impl, scripted_server, runtime):
    server = scripted_server([(503, {"Retry-After": "1"}), 202])
    impl.after_approve(make_event(approver_url=server.url, budget="10s"))
    first, second = server.requests
    assert second["at"] - first["at"] >= 1.0
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]
    assert first["body"] == second["body"]
    assert runtime.sent == []


def test_429_with_retry_after_is_retried_after_that_many_seconds(impl, scripted_server, runtime):
    server = scripted_server([(429, {"Retry-After": "1"}), 202])
    impl.after_approve(make_event(approver_url=server.url, budget="10s"))
    first, second = server.requests
    assert second["at"] - first["at"] >= 1.0
    assert runtime.sent == []


def test_500s_are_retried_with_backoff_until_accepted(impl, scripted_server, runtime):
    server = scripted_server([500, 502, 202])
    impl.after_approve(make_event(approver_url=server.url, budget="10s"))
    assert len(server.requests) == 3
    gaps = [b["at"] - a["at"] for a, b in zip(server.requests, server.requests[1:])]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1  # 0.05 s, then doubled
    assert runtime.sent == []


def test_repeated_503_gives_up_at_the_budget_and_tells_the_approver_what_still_works(
    impl, scripted_server, runtime
):
    server = scripted_server([(503, {"Retry-After": "1"})])
    event = make_event(approver_url=server.url, budget="2.5s")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="within the hook's 2 s budget") as failure:
        impl.after_approve(event)
    elapsed = time.monotonic() - started
    assert len(server.requests) == 3  # at 0 s, 1 s, 2 s; a third wait would end past 2.5 s
    assert elapsed < 2.5
    assert "HTTP 503" in str(failure.value)
    (dm, thread) = runtime.sent
    assert dm["to"] is event.user and thread["thread"] is True
    for message in (dm, thread):
        text = message["text"]
        assert "Deploy NOT released" in text and "HTTP 503" in text
        assert event.payload.fields["workflow_url"] in text
        # The service was unreachable: a registered gate still releases it; else cancel + rerun from start.
        assert "register_sym_gate" in text and "will release it when it is back" in text
        assert "cancel the workflow" in text and '"Rerun workflow from start"' in text
        assert "does not rerun the successful sym/request" in text
        assert "re-run the workflow" not in text.lower()


def test_retry_after_beyond_the_budget_is_not_waited_for(impl, scripted_server, runtime):
    server = scripted_server([(503, {"Retry-After": "120"}), 202])
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="asked to retry after 120 s"):
        impl.after_approve(make_event(approver_url=server.url, budget="5s"))
    assert time.monotonic() - started < 2
    assert len(server.requests) == 1
    assert len(not_released_messages(runtime)) == 2


def test_a_closed_port_is_retried_until_the_budget_then_reported(impl, runtime):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="connection failed"):
        impl.after_approve(make_event(approver_url="http://127.0.0.1:%d" % port, budget="1s"))
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 1.5  # it backed off between attempts and stopped at the budget
    (message, _thread) = not_released_messages(runtime)
    assert "connection failed" in message["text"]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_4xx_other_than_429_is_final_and_the_advice_is_cancel_then_rerun_from_start(
    impl, scripted_server, runtime, status
):
    server = scripted_server([status, 202])
    with pytest.raises(RuntimeError, match="final, not retried"):
        impl.after_approve(make_event(approver_url=server.url, budget="10s"))
    assert len(server.requests) == 1
    (message, _thread) = not_released_messages(runtime)
    text = message["text"]
    assert "HTTP %d" % status in text
    assert ("webhook secret" in text) == (status == 401)
    # Refused: no path releases it by itself; the gate advice would be wrong here.
    assert "will release it when it is back" not in text
    assert "The service refused it" in text and '"Rerun workflow from start"' in text


def test_a_slack_failure_does_not_hide_the_delivery_error(impl, scripted_server, runtime):
    server = scripted_server([422])
    runtime.fail_with = RuntimeError("slack is down")
    with pytest.raises(RuntimeError, match="HTTP 422"):
        impl.after_approve(make_event(approver_url=server.url))


def test_missing_configuration_is_reported_in_slack_too(impl, runtime):
    event = make_event(integrations={})
    with pytest.raises(RuntimeError, match="no 'approver' integration"):
        impl.after_approve(event)
    (message, _thread) = not_released_messages(runtime)
    assert "approver_integration_id" in message["text"]
    assert '"Rerun workflow from start"' in message["text"]


def test_a_failed_deny_says_nothing_was_released_nor_canceled(impl, scripted_server, runtime):
    server = scripted_server([400])
    with pytest.raises(RuntimeError):
        impl.after_deny(make_event(approver_url=server.url, event_type="deny"))
    texts = runtime.texts()
    assert len(texts) == 2 and all("Nothing was released and nothing was canceled" in t for t in texts)


def test_the_sandboxed_signature_verifies_with_the_standard_library(impl, scripted_server):
    import base64
    import hashlib
    import hmac

    server = scripted_server([202])
    event = make_event(approver_url=server.url, hold_job_name="deploy_gate_production")
    impl.after_approve(event)
    (request,) = server.requests
    h = request["headers"]
    key = base64.b64decode(event.flow.environment.integrations["approver"].settings["secrets"][0].retrieve_value()[6:])
    signed = ("%s.%s." % (h["webhook-id"], h["webhook-timestamp"])).encode() + request["body"]
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert h["webhook-signature"] == expected
    body = json.loads(request["body"])
    assert body["fields"]["hold_job_name"] == "deploy_gate_production"
    assert body["fields"]["workflow_id"] == event.payload.fields["workflow_id"]


# ------------------------------------------------------------------------------------------
# after_request: the run's binding to its workflow and hold job
# ------------------------------------------------------------------------------------------


def test_sandboxed_after_request_sends_the_signed_request_event(impl, scripted_server, runtime):
    server = scripted_server([200])
    event = make_event(approver_url=server.url, event_type="request", hold_job_name="deploy_gate_staging")
    assert impl.after_request(event) is None
    (request,) = server.requests
    assert request["path"] == "/webhooks/sym"
    body = json.loads(request["body"])
    assert body["event"]["type"] == "request"
    assert body["event"]["srn"] == "sym:event-spec:approval:1.0.0:request"
    assert body["run"]["srn"] == str(event.run.srn)
    assert body["id"] == str(uuid.uuid5(uuid.UUID(impl.EVENT_ID_NAMESPACE), "%s#request" % event.run.srn))
    assert body["fields"]["workflow_id"] == event.payload.fields["workflow_id"]
    assert body["fields"]["hold_job_name"] == "deploy_gate_staging"
    assert body["fields"]["workflow_url"] == event.payload.fields["workflow_url"]
    assert body["fields"]["merging_user"] == "bob"
    assert request["headers"]["webhook-id"] == "msg_" + body["id"].replace("-", "")
    assert runtime.sent == []


def test_sandboxed_after_request_retries_like_the_other_events(impl, scripted_server, runtime):
    server = scripted_server([(503, {"Retry-After": "1"}), 500, 200])
    impl.after_request(make_event(approver_url=server.url, event_type="request", budget="10s"))
    first, second, third = server.requests
    assert second["at"] - first["at"] >= 1.0 and third["at"] - second["at"] >= 0.05
    assert first["body"] == second["body"] == third["body"]
    assert runtime.sent == []


def test_an_undelivered_request_event_does_not_block_the_request_and_says_so_in_the_thread(
    impl, scripted_server, runtime
):
    server = scripted_server([(503, {"Retry-After": "1"})])
    event = make_event(approver_url=server.url, event_type="request", budget="1.5s")
    assert impl.after_request(event) is None  # no exception: the request stands
    assert len(server.requests) == 2
    (message,) = runtime.sent  # the thread only: the requester is CircleCI's bot
    assert message["thread"] is True
    text = message["text"]
    assert "did not receive this request" in text and "HTTP 503" in text
    assert "recovery by the service's reconciler will not work for this request" in text
    assert '"Rerun workflow from start"' in text


def test_a_refused_request_event_says_the_approval_will_be_refused_too(impl, scripted_server, runtime):
    server = scripted_server([401])
    assert impl.after_request(make_event(approver_url=server.url, event_type="request")) is None
    assert len(server.requests) == 1
    (message,) = runtime.sent
    assert "refused this request" in message["text"] and "webhook secret" in message["text"]
    assert "reconciler will not release" in message["text"]


def test_a_misconfigured_flow_is_reported_at_request_time(impl, runtime):
    event = make_event(event_type="request", flow_vars={"approver_url": ""})
    assert impl.after_request(event) is None
    (message,) = runtime.sent
    assert "approver_url is not set" in message["text"]


# ------------------------------------------------------------------------------------------
# End to end: the sandboxed hooks against the real service and its fake CircleCI
# ------------------------------------------------------------------------------------------


def e2e_event(service, **kwargs):
    return make_event(
        secret=kwargs.pop("secret", service.secret),
        approver_url=service.url,
        workflow_id=kwargs.pop("workflow_id", str(uuid.uuid4())),
        run_srn=kwargs.pop("run_srn", "acme:run:ci-approval:1.0.0:%s" % uuid.uuid4()),
        **kwargs,
    )


# The service answers a new request event 200 {"status": "bound"}: the run is bound to the
# workflow and hold job it was requested for.
REQUEST_EVENT_STATUSES = {"bound"}


@pytest.mark.e2e
def test_e2e_sandboxed_after_request_then_after_approve_approve_the_hold_job_once(impl, approver_service, runtime):
    request = e2e_event(approver_service, event_type="request")
    workflow_id = request.payload.fields["workflow_id"]

    response = impl.send_event(request, "request")
    assert response.status_code == 200, response.text
    first = response.json()
    assert first["status"] in REQUEST_EVENT_STATUSES and first["delivery_id"]
    again = impl.send_event(request, "request")  # a repeated hook
    assert again.status_code == 200 and again.json()["status"] in REQUEST_EVENT_STATUSES | {"duplicate"}
    impl.after_request(request)
    assert runtime.sent == []
    assert approver_service.calls(workflow_id, "approve") == []  # a request releases nothing

    approve = e2e_event(approver_service, workflow_id=workflow_id, run_srn=str(request.run.srn))
    impl.after_approve(approve)
    calls = wait_until(
        lambda: approver_service.calls(workflow_id, "approve"), 20, "an approve call at the fake CircleCI"
    )
    assert len(calls) == 1
    assert calls[0]["token_ok"] is True and calls[0]["status"] == 202
    assert runtime.sent == []

    # The same run's approve again (a repeated hook): the service says duplicate, nothing new.
    again = impl.send_event(approve, "approve")
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert len(approver_service.calls(workflow_id, "approve")) == 1


@pytest.mark.e2e
def test_e2e_hold_job_name_is_forwarded_and_the_hold_job_approved(impl, approver_service):
    event = e2e_event(approver_service, hold_job_name="wait_for_sym_approval")
    workflow_id = event.payload.fields["workflow_id"]
    response = impl.send_event(event, "approve")
    assert response.status_code == 202, response.text
    wait_until(lambda: approver_service.calls(workflow_id, "approve"), 20, "an approve call")


@pytest.mark.e2e
def test_e2e_a_hold_job_the_service_does_not_list_is_refused_and_reported(impl, approver_service, runtime):
    event = e2e_event(approver_service, hold_job_name="deploy_gate_not_listed")
    workflow_id = event.payload.fields["workflow_id"]
    with pytest.raises(RuntimeError, match="final, not retried.*HTTP 422"):
        impl.after_approve(event)
    (message, _thread) = not_released_messages(runtime)
    assert "hold_job_not_allowed" in message["text"] and "deploy_gate_not_listed" in message["text"]
    assert approver_service.calls(workflow_id, "approve") == []


@pytest.mark.e2e
def test_e2e_sandboxed_after_deny_is_recorded_by_the_service(impl, approver_service):
    event = e2e_event(approver_service, event_type="deny")
    workflow_id = event.payload.fields["workflow_id"]
    impl.after_deny(event)
    (item,) = approver_service.approvals(workflow_id)
    assert item["event_type"] == "deny"
    assert approver_service.calls(workflow_id, "approve") == []


@pytest.mark.e2e
def test_e2e_wrong_secret_is_refused_and_the_approver_told(impl, approver_service, runtime):
    other_secret = "whsec_" + __import__("base64").b64encode(b"\x01" * 32).decode()
    event = e2e_event(approver_service, secret=other_secret)
    with pytest.raises(RuntimeError, match="HTTP 401"):
        impl.after_approve(event)
    (message, _thread) = not_released_messages(runtime)
    assert "webhook secret" in message["text"]
    assert approver_service.approvals(event.payload.fields["workflow_id"]) == []
