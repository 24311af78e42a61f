"""Wrap a function so that something happens just before its n-th call (an interrupt, a failure)."""


def before_call(real, n: int, action):
    """A stand-in for `real` (a function, or a method set on its class) that runs `action()` just
    before the `n`-th call (1-based); `action` may raise, which then replaces that call."""
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            action()
        return real(*args, **kwargs)

    return wrapper
