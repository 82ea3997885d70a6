"""Stand-in for sym.sdk.templates.ApprovalTemplate: returns records of the requested outcome."""


class TemplateOutcome:
    def __init__(self, name, **kwargs):
        self.name = name
        self.kwargs = kwargs

    def __repr__(self):
        return "TemplateOutcome(%r, %r)" % (self.name, self.kwargs)


class ApprovalTemplate:
    @staticmethod
    def approve(**kwargs):
        return TemplateOutcome("approve", **kwargs)

    @staticmethod
    def deny(**kwargs):
        return TemplateOutcome("deny", **kwargs)

    @staticmethod
    def ignore(**kwargs):
        return TemplateOutcome("ignore", **kwargs)
