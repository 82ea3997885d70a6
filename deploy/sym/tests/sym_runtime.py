"""What Sym's flow runtime hands impl.py, built on the published sym-sdk (0.61.0).

The SDK declares the objects a handler receives (sym.sdk.event.Event and everything reachable
from it) as abstract classes, and declares the integration functions (slack.channel,
slack.send_message, ...) and the template transitions (ApprovalTemplate.deny, ...) with
signatures and docstrings but no body: Sym's runtime supplies the implementations. This module
supplies them for the tests:

* Concrete subclasses of the SDK's abstract classes (Event, Payload, Channel, EventMeta, Flow,
  Environment, Run, User, UserIdentity, Integration, Secret, SecretSource, ApprovalTemplate).
  Each one checks at construction that every abstract member of its SDK base is implemented,
  also for the SDK classes that are not ABCMeta-based (Payload, Channel), so a property the SDK
  declares and the double forgets fails at once, not deep inside a test.
* A recording runtime for the integration functions and template transitions impl.py calls
  (Runtime.install()). Every call is checked against the SDK function's own signature
  (inspect.signature(...).bind), and the objects returned are the SDK's real models
  (SlackChannelName / SlackChannelID), so pydantic validates what impl.py builds from them.
"""

import datetime
import inspect
import uuid

from sym.sdk.event import Channel, Event, EventMeta, Payload
from sym.sdk.flow import Environment, Flow, Run
from sym.sdk.integrations import slack
from sym.sdk.request_destination import RequestDestination, SlackChannelID, SlackChannelName
from sym.sdk.secret import Secret, SecretSource
from sym.sdk.strategies.integration import Integration
from sym.sdk.templates import ApprovalTemplate
from sym.sdk.user import User, UserIdentity, UserRole

ORG = "acme"
DEFAULT_SECRET = "whsec_a4ayc/80/OGda4BO/1o/V0etpOqiLx1J"
DEFAULT_WORKFLOW_ID = "7b2d6c1e-8f3a-4b5c-9d0e-1f2a3b4c5d6e"
DEFAULT_RUN_SRN = "acme:run:ci-approval:1.0.0:4e41814e-34b2-418c-9582-2d8bc610ea2a"
DEFAULT_USER_ID = "4f36af92-f3a6-4476-b7d4-f7ee82efe088"
DEFAULT_TIMESTAMP = datetime.datetime(2026, 11, 22, 12, 0, 0, 123456, tzinfo=datetime.timezone.utc)


def abstract_members(cls):
    """Names of the members declared abstract anywhere in cls's MRO and not overridden."""
    names = set()
    for name in dir(cls):
        if getattr(inspect.getattr_static(cls, name), "__isabstractmethod__", False):
            names.add(name)
    return names


class Complete:
    """Mixin: construction fails when an SDK abstract member is left unimplemented."""

    def __init__(self, *args, **kwargs):
        missing = abstract_members(type(self))
        if missing:
            raise TypeError("%s leaves SDK members unimplemented: %s" % (type(self).__name__, sorted(missing)))
        super().__init__(*args, **kwargs)


class FakeIdentity(Complete, UserIdentity):
    def __init__(self, service, service_id, user_id):
        super().__init__()
        self._service = service
        self._service_id = service_id
        self._user_id = user_id

    @property
    def service(self):
        return self._service

    @property
    def service_id(self):
        return self._service_id

    @property
    def user_id(self):
        return self._user_id


class FakeUser(Complete, User):
    def __init__(self, user_id=DEFAULT_USER_ID, first_name="Alice", last_name="Approver",
                 email="alice@example.com", identities=None, kind="normal"):
        super().__init__()
        self._id = uuid.UUID(user_id)
        self._first_name = first_name
        self._last_name = last_name
        self._email = email
        self._type = kind
        if identities is None:
            identities = {"slack": [FakeIdentity("slack", "TABC123", "UABC123")]}
        self._identities = identities

    @property
    def id(self):
        return self._id

    @property
    def email(self):
        return self._email

    @property
    def username(self):
        return self._email or "bot-" + str(self._id)

    @property
    def type(self):
        return self._type

    @property
    def first_name(self):
        return self._first_name

    @property
    def last_name(self):
        return self._last_name

    @property
    def identities(self):
        return self._identities

    @property
    def role(self):
        return UserRole.MEMBER

    def identity(self, service_type, service_id=None):
        for identity in self._identities.get(service_type, []):
            if service_id is None or identity.service_id == service_id:
                return identity
        return None

    def get_event_count(self, event_name, since=None, until=None, filter_on="flow", include_errored=False):
        return 0


class FakeSecretSource(Complete, SecretSource):
    def __init__(self):
        super().__init__("%s:secrets:aws_secrets_manager:circleci-approver-sym-secrets:latest" % ORG)

    @property
    def type(self):
        return "aws_secrets_manager"

    @property
    def settings(self):
        return {"context_id": str(uuid.UUID(int=1))}


class FakeSecret(Complete, Secret):
    def __init__(self, value):
        super().__init__("%s:secret:aws_secrets_manager:circleci-approver-webhook-secret:latest" % ORG)
        self._value = value
        self.reads = 0

    @property
    def id(self):
        return str(uuid.UUID(int=2))

    @property
    def path(self):
        return "sym/circleci-approver/circleci-approver-webhook-secret"

    @property
    def source(self):
        return FakeSecretSource()

    @property
    def settings(self):
        return {}

    def retrieve_value(self):
        self.reads = self.reads + 1
        return self._value


class FakeIntegration(Complete, Integration):
    def __init__(self, secrets):
        super().__init__("%s:integration:custom:circleci-approver:latest" % ORG)
        self._secrets = secrets

    @property
    def type(self):
        return "custom"

    @property
    def external_id(self):
        return "https://approver.example.com"

    @property
    def settings(self):
        # What secret_ids_json in main.tf becomes: the sym_secret objects, in order.
        return {"secrets": list(self._secrets)}


class FakeEnvironment(Complete, Environment):
    def __init__(self, integrations):
        super().__init__("%s:environment:circleci-approver:latest" % ORG)
        self._integrations = integrations

    @property
    def integrations(self):
        return self._integrations


class FakeFlow(Complete, Flow):
    def __init__(self, variables, environment):
        super().__init__("%s:flow:ci-approval:1.0.0" % ORG)
        self._vars = variables
        self._environment = environment

    @property
    def fields(self):
        return {}

    @property
    def vars(self):
        return self._vars

    @property
    def environment(self):
        return self._environment

    @property
    def strategy(self):
        return None


class FakeChannel(Complete, Channel):
    def __init__(self, kind="slack", identifier="#ci-approvals"):
        super().__init__("%s:channel:%s:latest" % (ORG, kind))
        self._kind = kind
        self._identifier = identifier

    @property
    def identifier(self):
        return self._identifier

    @property
    def type(self):
        return self._kind


class FakeRun(Complete, Run):
    def __init__(self, srn, requester):
        super().__init__(srn)
        self._requester = requester

    @property
    def actors(self):
        return {"request": self._requester}

    @property
    def contexts(self):
        return {}

    @property
    def source_channel(self):
        return FakeChannel(kind="api", identifier=None)


class FakePayload(Complete, Payload):
    def __init__(self, srn, fields, user, timestamp=DEFAULT_TIMESTAMP):
        super().__init__(srn)
        self._srn_text = srn
        self._fields = fields
        self._user = user
        self._timestamp = timestamp

    @property
    def timestamp(self):
        return self._timestamp

    @property
    def fields(self):
        return self._fields

    @property
    def srn(self):
        return self._srn

    @property
    def user(self):
        return self._user


class FakeEventMeta(Complete, EventMeta):
    pass


class FakeTemplate(Complete, ApprovalTemplate):
    """The approval template; its transitions return a record of what was asked for."""

    @classmethod
    def prompt(cls, **kwargs):
        return Transition("prompt", kwargs)

    @classmethod
    def request(cls, *, target_srn=None, duration=None, **kwargs):
        return Transition("request", kwargs)

    @classmethod
    def approve(cls, *, target_srn=None, duration=None, **kwargs):
        return Transition("approve", kwargs)

    @classmethod
    def deny(cls, *, target_srn=None, duration=None, **kwargs):
        return Transition("deny", kwargs)

    @classmethod
    def escalate(cls, *, target_srn=None, duration=None, **kwargs):
        return Transition("escalate", kwargs)

    @classmethod
    def deescalate(cls, *, target_srn=None, **kwargs):
        return Transition("deescalate", kwargs)

    @classmethod
    def ignore(cls, *, message=None, **kwargs):
        return Transition("ignore", dict(kwargs, message=message))


class Transition:
    def __init__(self, name, kwargs):
        self.name = name
        self.kwargs = kwargs

    def __repr__(self):
        return "Transition(%r, %r)" % (self.name, self.kwargs)


class FakeEvent(Complete, Event):
    def __init__(self, name, payload, flow, run, channel, template, meta):
        super().__init__("sym:event-spec:approval:1.0.0:%s" % name)
        self._name = name
        self._payload = payload
        self._flow = flow
        self._run = run
        self._channel = channel
        self._template = template
        self._meta = meta

    @property
    def name(self):
        return self._name

    @property
    def payload(self):
        return self._payload

    @property
    def meta(self):
        return self._meta

    @property
    def template(self):
        return self._template

    @property
    def flow(self):
        return self._flow

    @property
    def run(self):
        return self._run

    @property
    def channel(self):
        return self._channel

    def get_actor(self, event_name):
        return self._run.actors.get(event_name)

    def get_context(self, event_name):
        return self._run.contexts.get(event_name)


def make_event(
    secret=DEFAULT_SECRET,
    approver_url="http://127.0.0.1:9",
    workflow_id=DEFAULT_WORKFLOW_ID,
    run_srn=DEFAULT_RUN_SRN,
    event_type="approve",
    hold_job_name=None,
    budget=None,
    integrations=None,
    flow_vars=None,
    user=None,
    channel_type="slack",
    timestamp=DEFAULT_TIMESTAMP,
):
    """An Event as Sym's runtime hands it to a handler, built from the SDK's abstract classes.

    event.payload.fields are the prompt fields (workflow_id, workflow_url, merging_user and the
    optional hold_job_name); event.flow.vars are sym_flow.vars from main.tf (strings);
    event.flow.environment.integrations["approver"] is the custom integration holding the secret.
    """
    fields = {
        "workflow_id": workflow_id,
        "workflow_url": "https://app.circleci.com/pipelines/gh/acme/api/42/workflows/" + str(workflow_id),
        "merging_user": "bob",
    }
    if hold_job_name is not None:
        fields["hold_job_name"] = hold_job_name
    variables = {"approver_url": approver_url, "approvals_channel": "#ci-approvals"}
    if budget is not None:
        variables["delivery_budget_seconds"] = str(budget)
    if flow_vars is not None:
        variables.update(flow_vars)
    if integrations is None:
        integrations = {"approver": FakeIntegration([FakeSecret(secret)])}
    user = user or FakeUser()
    requester = FakeUser(user_id=str(uuid.UUID(int=7)), first_name=None, last_name=None, email=None, kind="bot")
    return FakeEvent(
        name=event_type,
        payload=FakePayload("sym:event-spec:approval:1.0.0:%s" % event_type, fields, user, timestamp),
        flow=FakeFlow(variables, FakeEnvironment(integrations)),
        run=FakeRun(run_srn, requester),
        channel=FakeChannel(kind=channel_type),
        template=FakeTemplate("sym:template:approval:1.0.0"),
        meta=FakeEventMeta("sym:event-spec:approval:1.0.0:%s" % event_type),
    )


# --------------------------------------------------------------------------------------------
# The runtime's side of the SDK's declared functions
# --------------------------------------------------------------------------------------------


class Runtime:
    """Records what impl.py asks of Sym (Slack messages, template transitions).

    install(monkeypatch) replaces the SDK's declared-only functions with recorders whose
    arguments are checked against the SDK function's signature.
    """

    def __init__(self):
        self.sent = []  # {"to": destination or None, "thread": bool, "text": str}
        self.fail_with = None  # an exception Slack calls raise, to test that failures are survived

    def install(self, monkeypatch):
        def checked(original, implementation):
            signature = inspect.signature(original)

            def call(*args, **kwargs):
                bound = signature.bind(*args, **kwargs)  # TypeError on a call the SDK does not declare
                bound.apply_defaults()
                return implementation(**bound.arguments)

            return call

        monkeypatch.setattr(slack, "channel", checked(slack.channel, self.channel))
        monkeypatch.setattr(slack, "send_message", checked(slack.send_message, self.send_message))
        monkeypatch.setattr(slack, "send_thread_message", checked(slack.send_thread_message, self.send_thread_message))
        for step in ("prompt", "request", "approve", "deny", "escalate", "deescalate", "ignore"):
            monkeypatch.setattr(ApprovalTemplate, step, getattr(FakeTemplate, step))
        return self

    @staticmethod
    def channel(name, allow_self=False, timeout=None):
        if str(name).startswith("#"):
            return SlackChannelName(channel_name=name, allow_self=allow_self, timeout=timeout)
        return SlackChannelID(channel_id=name, allow_self=allow_self, timeout=timeout)

    def send_message(self, destination, message):
        if not isinstance(destination, (User, RequestDestination)):
            raise TypeError("send_message destination must be a User or RequestDestination: %r" % (destination,))
        if not isinstance(message, str):
            raise TypeError("send_message message must be a str")
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append({"to": destination, "thread": False, "text": message})

    def send_thread_message(self, message):
        if not isinstance(message, str):
            raise TypeError("send_thread_message message must be a str")
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append({"to": None, "thread": True, "text": message})

    def texts(self, needle=None):
        return [m["text"] for m in self.sent if needle is None or needle in m["text"]]
