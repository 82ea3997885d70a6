"""Stand-in for sym.sdk.integrations.slack."""


class SlackChannel:
    def __init__(self, name, allow_self=True):
        self.name = name
        self.allow_self = allow_self


def channel(name, allow_self=True):
    return SlackChannel(name, allow_self=allow_self)
