"""Stand-ins for sym.sdk.annotations: the decorators only tag the function."""


def _tag(kind):
    def decorate(fn):
        fn.__sym_handler__ = kind
        return fn

    return decorate


hook = _tag("hook")
reducer = _tag("reducer")
action = _tag("action")
