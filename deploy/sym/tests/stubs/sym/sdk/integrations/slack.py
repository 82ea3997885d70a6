"""Stand-in for sym.sdk.integrations.slack: channel(), send_message(), send_thread_message().

Signatures follow the published SDK reference (sym.sdk.integrations.slack, sym-sdk 0.61):
channel(name, allow_self=False, timeout=None), send_message(destination, message) and
send_thread_message(message). Messages are recorded in SENT instead of going to Slack; a test can
make sending fail by setting FAIL_WITH to an exception.
"""

SENT = []
FAIL_WITH = None


class SlackChannel:
    def __init__(self, name, allow_self=False, timeout=None):
        self.name = name
        self.allow_self = allow_self
        self.timeout = timeout


def channel(name, allow_self=False, timeout=None):
    return SlackChannel(name, allow_self=allow_self, timeout=timeout)


def send_message(destination, message):
    if FAIL_WITH is not None:
        raise FAIL_WITH
    SENT.append({"to": destination, "thread": False, "text": message})


def send_thread_message(message):
    if FAIL_WITH is not None:
        raise FAIL_WITH
    SENT.append({"to": None, "thread": True, "text": message})


def reset():
    global FAIL_WITH
    del SENT[:]
    FAIL_WITH = None
