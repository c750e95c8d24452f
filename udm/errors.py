"""The one exception type whose message is shown to users as is, without a traceback."""


class UdmError(Exception):
    """A problem with the user's input (config, checkpoint, data): the message names it and the fix."""
