"""Stage: requests and tokens per minute per end user, key and user; per IP before a key.

flask-limiter's storage does the counting: Redis when ``METERGATE_REDIS_URL`` is set
(each hit is one atomic Lua script, so a limit is exact across every process sharing
the Redis), in-process otherwise. Two strategies on that one storage:

    requests  moving window: a log of hit times, exact (never more than N in any 60 s)
    tokens    sliding-window counter: two counters weighted by time, so a hit of any
              size is one INCRBY, and can be given back with a negative hit

Token limits charge the prompt estimate plus the completion allowance up front
(``proxy.charge``), and are corrected once the call's usage is known: the unused part
is given back as a negative hit on the same windows (freeing headroom at once); a call
that used more than it was charged is charged the difference, up to what the window
has left (past the limit it only lengthens the wait, which the next call pays anyway).

Scopes are checked narrowest first (end user, key, user), so an end user refused by
its own requests limit takes nothing from the key's or the user's. A refused call takes
no tokens: every token charge made for it is given back. Request hits are not given
back (a refused call still counts as a request, as with the providers).

On Redis a hit and the read of its window's state (for the x-ratelimit-* headers) go
in one pipeline, running flask-limiter's own scripts on its own keys
(``_PipelinedWindows``); the widest requests limit and every token charge share one: a
call limited on one scope makes one round trip. The token charge's correction once
the call is done goes with the call's other last scripts (``proxy.script_batch``).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from flask import Flask
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.storage import RedisStorage, SlidingWindowCounterSupport
from limits.strategies import RateLimiter, SlidingWindowCounterRateLimiter
from redis import Redis, RedisError
from redis.commands.core import Script

from proxy.config_cache import Principal
from proxy.errors import GatewayError, RateLimited
from proxy.script_batch import ScriptBatch, run_scripts
from shared.settings import Settings

WINDOW_SECONDS = 60
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Window:
    """A limit's state after this call: what the x-ratelimit-* headers say."""

    limit: int
    remaining: int
    reset_seconds: float


@dataclass(slots=True)
class RateGrant:
    """What a call was charged, so the token charge can be corrected afterwards."""

    charged_tokens: int
    token_hits: list[tuple[RateLimitItem, tuple[str, ...]]] = field(default_factory=list)
    requests: Window | None = None
    tokens: Window | None = None
    is_corrected: bool = False

    def headers(self) -> dict[str, str]:
        """OpenAI-style headers for the most restrictive limit of each kind that applies."""
        headers: dict[str, str] = {}
        for kind, window in (("requests", self.requests), ("tokens", self.tokens)):
            if window is not None:
                headers.update(window_headers(kind, window))
        return headers


@dataclass(frozen=True, slots=True)
class _Scope:
    ids: tuple[str, ...]
    label: str
    rpm: int | None
    tpm: int | None


def window_headers(kind: str, window: Window) -> dict[str, str]:
    return {
        f"x-ratelimit-limit-{kind}": str(window.limit),
        f"x-ratelimit-remaining-{kind}": str(max(0, min(window.limit, window.remaining))),
        f"x-ratelimit-reset-{kind}": format_duration(window.reset_seconds),
    }


def format_duration(seconds: float) -> str:
    """A duration as OpenAI writes it (Go style): "20ms", "1s", "1.5s", "6m0s", "1h0m0s"."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    millis = math.ceil(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs = f"{millis / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def seconds_until_fits(
    limit: int, cost: int, window: tuple[int, float, int, float], expiry: float = WINDOW_SECONDS
) -> float:
    """When a sliding-window counter will take ``cost`` more (inf if never: cost > limit).

    ``window`` is the storage's (previous count, previous TTL, current count, current
    TTL). The weighted count is ``previous * previous_ttl / expiry + current``; the
    previous window decays linearly until the current one becomes the previous (when
    its TTL drops to ``expiry``), then that one decays in turn.
    """
    previous, previous_ttl, current, current_ttl = window
    if cost > limit:
        return math.inf
    shift_in = current_ttl - expiry if current_ttl > 0 else math.inf
    room = limit - current - cost
    if room >= 0:
        if previous <= 0:
            return 0.0
        wait = max(0.0, previous_ttl - room * expiry / previous)
        if wait <= shift_in:
            return wait
    if math.isinf(shift_in):
        return expiry
    # After the shift the current count decays over the next window.
    wait_after = 0.0 if current <= 0 else max(0.0, expiry - (limit - cost) * expiry / current)
    return max(0.0, shift_in) + wait_after


def retry_after(seconds: float) -> str:
    """Whole seconds, strictly after ``seconds`` (a window frees a hit just past its end)."""
    return str(max(1, math.floor(seconds) + 1))


def _stricter(old: Window | None, new: Window) -> Window:
    if old is None or (new.remaining, new.limit) < (old.remaining, old.limit):
        return new
    return old


Sliding = tuple[int, float, int, float]  # previous count, its TTL, current count, its TTL


class _PipelinedWindows:
    """A hit and its window's state in one Redis round trip, on limits' RedisStorage.

    The same scripts, keys and arguments as ``limits``' moving-window and sliding-window
    strategies (``acquire_entry`` + ``get_moving_window``, ``acquire_sliding_window_entry``
    + ``get_sliding_window``), queued in one pipeline instead of sent one by one.
    """

    def __init__(self, storage: RedisStorage) -> None:
        self._storage = storage
        self._redis = cast(Redis, storage.get_connection())

    def hit_requests(self, item: RateLimitItem, ids: tuple[str, ...]) -> tuple[bool, float, int]:
        """(hit, window start, entries in the window) after counting one request."""
        now = time.time()
        acquired, window = self._run(*self._request_calls(item, ids, now))
        return self._request_result(acquired, window, now)

    def hit_tokens(
        self, item: RateLimitItem, ids: tuple[str, ...], cost: int
    ) -> tuple[bool, Sliding]:
        """(hit, the sliding window's state) after charging ``cost``."""
        acquired, window = self._run(*self._token_calls(item, ids, cost))
        return self._token_result(acquired, window)

    def begin_hit_all(
        self,
        request: tuple[RateLimitItem, tuple[str, ...]] | None,
        token_limits: list[tuple[RateLimitItem, tuple[str, ...]]],
        cost: int,
        batch: ScriptBatch | None,
    ) -> Callable[[], tuple[tuple[bool, float, int] | None, list[tuple[bool, Sliding]]]]:
        """``hit_requests`` on ``request`` (if any) and ``hit_tokens`` on each of
        ``token_limits``, all in one round trip: queued in ``batch`` (sent with the call's
        other scripts), else sent now. The returned function gives the results (raising
        the RedisError a script met)."""
        now = time.time()
        calls = list(self._request_calls(*request, now)) if request is not None else []
        for item, ids in token_limits:
            calls += self._token_calls(item, ids, cost)
        sent = self._run(*calls) if batch is None else None
        readers = [] if batch is None else [batch.later(*call) for call in calls]

        def results() -> tuple[tuple[bool, float, int] | None, list[tuple[bool, Sliding]]]:
            found = sent if sent is not None else [read() for read in readers]
            start = 0 if request is None else 2
            tokens = [
                self._token_result(found[index], found[index + 1])
                for index in range(start, len(found), 2)
            ]
            if request is None:
                return None, tokens
            return self._request_result(found[0], found[1], now), tokens

        return results

    def queue_token_hit(
        self,
        batch: ScriptBatch,
        item: RateLimitItem,
        ids: tuple[str, ...],
        cost: int,
        then: Callable[[Any], None],
    ) -> None:
        """Charge ``cost`` (negative: give back) in ``batch``; ``then`` gets whether it fit."""
        script, keys, args = self._token_calls(item, ids, cost)[0]
        batch.add(script, keys, args, then)

    def _request_calls(
        self, item: RateLimitItem, ids: tuple[str, ...], now: float
    ) -> list[tuple[Script, list[str], list[Any]]]:
        storage = self._storage
        key = storage.prefixed_key(item.key_for(*ids))
        expiry = item.get_expiry()
        return [
            (storage.lua_acquire_moving_window, [key], [now, item.amount, expiry, 1]),
            (storage.lua_moving_window, [key], [now - expiry, item.amount]),
        ]

    @staticmethod
    def _request_result(acquired: Any, window: Any, now: float) -> tuple[bool, float, int]:
        if window:
            return bool(acquired), float(window[0]), int(window[1])
        return bool(acquired), now, 0

    def _token_calls(
        self, item: RateLimitItem, ids: tuple[str, ...], cost: int
    ) -> list[tuple[Script, list[str], list[Any]]]:
        storage = self._storage
        key = item.key_for(*ids)
        keys = [
            storage.prefixed_key(storage._previous_window_key(key)),
            storage.prefixed_key(storage._current_window_key(key)),
        ]
        expiry = item.get_expiry()
        return [
            (storage.lua_acquire_sliding_window, keys, [item.amount, expiry, cost]),
            (storage.lua_sliding_window, keys, [expiry]),
        ]

    @staticmethod
    def _token_result(acquired: Any, window: Any) -> tuple[bool, Sliding]:
        if not window:
            return bool(acquired), (0, 0.0, 0, 0.0)
        return bool(acquired), (
            int(window[0] or 0),
            max(0, float(window[1] or 0)) / 1000,
            int(window[2] or 0),
            max(0, float(window[3] or 0)) / 1000,
        )

    def _run(self, *calls: tuple[Script, list[str], list[Any]]) -> list[Any]:
        results = run_scripts(self._redis, calls)
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results


class RateLimits:
    """The rate-limit stage on a flask-limiter ``Limiter`` (its storage and strategy)."""

    def __init__(
        self,
        limiter: Limiter,
        *,
        unauthenticated_rpm: int,
        is_fail_open: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._requests: RateLimiter = limiter.limiter  # the moving window
        self._tokens = SlidingWindowCounterRateLimiter(limiter.storage)
        self._pipelined = (
            _PipelinedWindows(limiter.storage)
            if isinstance(limiter.storage, RedisStorage)
            else None
        )
        self._unauthenticated_rpm = unauthenticated_rpm
        self._is_fail_open = is_fail_open  # Redis unreachable: let calls through, unlimited
        self._clock = clock

    def check(self, principal: Principal, end_user: str | None, tokens: int) -> RateGrant:
        """Count one request and charge ``tokens``; RateLimited (429) past any limit.

        Redis unreachable: 503 ``rate_limits_unavailable``, or, failing open, a grant that
        limits nothing (logged).
        """
        return self.begin_check(principal, end_user, tokens, None)()

    def begin_check(
        self,
        principal: Principal,
        end_user: str | None,
        tokens: int,
        batch: ScriptBatch | None,
    ) -> Callable[[], RateGrant]:
        """``check`` in two steps. On Redis its last round trip (the widest request limit
        and every token charge) is queued in ``batch``, to go with the call's other
        scripts; the returned function, called once the batch ran, gives the grant or
        raises as ``check`` does. Without a batch that round trip is made now. A narrower
        request limit (a caller with several) is counted now, and may refuse here."""
        requests, token_limits = _limits_of(principal, end_user)
        try:
            finish = self._count(RateGrant(charged_tokens=tokens), requests, token_limits, batch)
        except RedisError as exc:
            grant = self._unavailable(exc, tokens)
            return lambda: grant

        def finished() -> RateGrant:
            try:
                return finish()
            except RedisError as exc:
                return self._unavailable(exc, tokens)

        return finished

    def _unavailable(self, exc: RedisError, tokens: int) -> RateGrant:
        """Redis failed the check: 503, or (failing open) a grant that limits nothing."""
        if not self._is_fail_open:
            raise _store_down() from exc
        log.warning("event=rate_limits_unavailable policy=fail_open error=%s", type(exc).__name__)
        return RateGrant(charged_tokens=tokens)

    def correct(
        self, grant: RateGrant, actual_tokens: int, batch: ScriptBatch | None = None
    ) -> None:
        """Bring the token charge to what the call really used (once). Never raises.

        With a ``batch`` (on Redis) the charges are queued in it, to go with the call's
        other last scripts in one round trip."""
        if grant.is_corrected:
            return
        grant.is_corrected = True
        difference = actual_tokens - grant.charged_tokens
        if difference == 0:
            return
        for item, ids in grant.token_hits:
            if batch is not None and self._pipelined is not None:
                then = functools.partial(self._after_correction, item, ids, difference)
                self._pipelined.queue_token_hit(batch, item, ids, difference, then)
                continue
            try:
                self._after_correction(
                    item, ids, difference, self._tokens.hit(item, *ids, cost=difference)
                )
            except RedisError:  # the window forgets by itself within a minute
                return

    def _after_correction(
        self, item: RateLimitItem, ids: tuple[str, ...], difference: int, fitted: Any
    ) -> None:
        """A call that used more than it was charged and does not fit: charge what the
        window has left (past the limit only lengthens the wait). Never raises."""
        if difference < 0 or isinstance(fitted, Exception) or fitted:
            return
        try:
            left = self._tokens.get_window_stats(item, *ids).remaining
            if left > 0:
                self._tokens.hit(item, *ids, cost=min(left, difference))
        except RedisError:
            return

    def check_unauthenticated(self, client_ip: str | None) -> None:
        """Count a call whose key failed; RateLimited past the per-IP limit.

        Redis unreachable: returns, so the call is refused 401 all the same.
        """
        item = RateLimitItemPerMinute(self._unauthenticated_rpm)
        ids = ("unauthenticated", client_ip or "unknown")
        try:
            if self._requests.hit(item, *ids):
                return
            window = self._request_window(item, ids)
        except RedisError:
            return
        raise RateLimited(
            f"Too many requests with a missing or invalid API key from {client_ip}: "
            f"the limit is {item.amount} per minute. Check the key you send, and try again "
            f"in {format_duration(window.reset_seconds)}.",
            openai_type="requests",
            headers={
                "Retry-After": retry_after(window.reset_seconds),
                **window_headers("requests", window),
            },
        )

    # -- internals --------------------------------------------------------------------

    def _count(
        self,
        grant: RateGrant,
        requests: list[_Limit],
        token_limits: list[_Limit],
        batch: ScriptBatch | None,
    ) -> Callable[[], RateGrant]:
        """Count the request and charge ``grant.charged_tokens``; see ``begin_check``."""
        tokens = grant.charged_tokens
        pipelined = self._pipelined
        # On Redis the widest request limit goes with the token charges, in one round trip.
        widest = requests[-1] if pipelined is not None and requests else None
        for scope, item, ids in requests if widest is None else requests[:-1]:
            is_hit, window = self._hit_requests(item, ids)
            if not is_hit:
                raise self._requests_refusal(scope, item, ids)
            grant.requests = _stricter(grant.requests, window)
        if pipelined is None:  # in process: nothing to wait for
            self._take_tokens(grant, token_limits, self._hit_tokens_in_turn(token_limits, tokens))
            return lambda: grant
        if widest is None and not token_limits:
            return lambda: grant
        results = pipelined.begin_hit_all(
            (widest[1], widest[2]) if widest is not None else None,
            [(item, ids) for _, item, ids in token_limits],
            tokens,
            batch,
        )

        def finish() -> RateGrant:
            counted, charged = results()
            if widest is not None and counted is not None:
                scope, item, ids = widest
                is_hit, start, count = counted
                if not is_hit:
                    refusal = self._requests_refusal(scope, item, ids)
                    self._give_back(token_limits, charged, tokens)
                    raise refusal
                window = self._moving_window(item, item.amount - count, start + item.get_expiry())
                grant.requests = _stricter(grant.requests, window)
            self._take_tokens(grant, token_limits, charged)
            return grant

        return finish

    def _take_tokens(
        self, grant: RateGrant, token_limits: list[_Limit], charged: list[tuple[bool, Sliding]]
    ) -> None:
        """Keep the charges in ``grant``; RateLimited (all given back) if one did not fit."""
        for (scope, item, ids), (is_hit, _) in zip(token_limits, charged, strict=False):
            if not is_hit:
                refusal = self._tokens_refusal(scope, item, ids, grant.charged_tokens)
                self._give_back(token_limits, charged, grant.charged_tokens)
                raise refusal
        for (_, item, ids), (_, sliding) in zip(token_limits, charged, strict=True):
            grant.token_hits.append((item, ids))
            grant.tokens = _stricter(grant.tokens, self._window_of(item, sliding, item.amount))

    def _hit_tokens_in_turn(
        self, token_limits: list[_Limit], tokens: int
    ) -> list[tuple[bool, Sliding]]:
        """Charge each scope narrowest first, stopping at the first that refuses."""
        charged: list[tuple[bool, Sliding]] = []
        for _, item, ids in token_limits:
            charged.append(self._hit_tokens(item, ids, tokens))
            if not charged[-1][0]:
                break
        return charged

    def _give_back(
        self,
        token_limits: list[_Limit],
        charged: list[tuple[bool, Sliding]],
        tokens: int,
    ) -> None:
        """A refused call takes no tokens: undo the charges that were made."""
        for (_, item, ids), (is_hit, _) in zip(token_limits, charged, strict=False):
            if is_hit:
                self._tokens.hit(item, *ids, cost=-tokens)

    def _hit_requests(self, item: RateLimitItem, ids: tuple[str, ...]) -> tuple[bool, Window]:
        """Count one request; whether it fit, and the window's state after it."""
        if self._pipelined is None:
            if not self._requests.hit(item, *ids):
                return False, Window(item.amount, 0, 0.0)
            return True, self._request_window(item, ids)
        is_hit, start, count = self._pipelined.hit_requests(item, ids)
        return is_hit, self._moving_window(item, item.amount - count, start + item.get_expiry())

    def _hit_tokens(
        self, item: RateLimitItem, ids: tuple[str, ...], tokens: int
    ) -> tuple[bool, Sliding]:
        """Charge ``tokens``; whether they fit, and the sliding window's state after it."""
        if self._pipelined is None:
            if not self._tokens.hit(item, *ids, cost=tokens):
                return False, (0, 0.0, 0, 0.0)
            return True, self._sliding(item, ids)
        return self._pipelined.hit_tokens(item, ids, tokens)

    def _request_window(self, item: RateLimitItem, ids: tuple[str, ...]) -> Window:
        stats = self._requests.get_window_stats(item, *ids)
        return self._moving_window(item, stats.remaining, stats.reset_time)

    def _moving_window(self, item: RateLimitItem, remaining: int, reset_at: float) -> Window:
        """The x-ratelimit-*-requests figures: no reset while the window is untouched."""
        reset = reset_at - self._clock() if remaining < item.amount else 0.0
        return Window(item.amount, remaining, max(0.0, reset))

    def _sliding(self, item: RateLimitItem, ids: tuple[str, ...]) -> Sliding:
        storage = cast(SlidingWindowCounterSupport, self._tokens.storage)
        return storage.get_sliding_window(item.key_for(*ids), item.get_expiry())

    def _token_window(self, item: RateLimitItem, ids: tuple[str, ...], cost: int) -> Window:
        """The window's state; ``reset_seconds`` is when ``cost`` tokens will fit."""
        return self._window_of(item, self._sliding(item, ids), cost)

    def _window_of(self, item: RateLimitItem, window: Sliding, cost: int) -> Window:
        previous, previous_ttl, current, _ = window
        used = math.floor(previous * previous_ttl / item.get_expiry()) + current
        wait = seconds_until_fits(item.amount, cost, window, item.get_expiry())
        reset = item.get_expiry() if math.isinf(wait) else wait
        return Window(item.amount, item.amount - used, reset)

    def _requests_refusal(
        self, scope: _Scope, item: RateLimitItem, ids: tuple[str, ...]
    ) -> RateLimited:
        window = self._request_window(item, ids)
        return RateLimited(
            f"Rate limit reached for requests per minute (RPM) of {scope.label}: "
            f"Limit {item.amount}, Used {item.amount - window.remaining}, Requested 1. "
            f"Please try again in {format_duration(window.reset_seconds)}.",
            openai_type="requests",
            headers={
                "Retry-After": retry_after(window.reset_seconds),
                **window_headers("requests", window),
            },
        )

    def _tokens_refusal(
        self, scope: _Scope, item: RateLimitItem, ids: tuple[str, ...], tokens: int
    ) -> RateLimited:
        window = self._token_window(item, ids, tokens)
        if tokens > item.amount:
            return RateLimited(
                f"Request too large for the tokens per minute (TPM) limit of {scope.label}: "
                f"Limit {item.amount}, Requested {tokens} (prompt estimate + max_tokens). "
                "Lower max_tokens or shorten the prompt.",
                openai_type="tokens",
                headers={
                    "Retry-After": retry_after(WINDOW_SECONDS),
                    "x-should-retry": "false",
                    **window_headers("tokens", window),
                },
            )
        return RateLimited(
            f"Rate limit reached for tokens per minute (TPM) of {scope.label}: "
            f"Limit {item.amount}, Used {item.amount - window.remaining}, Requested {tokens}. "
            f"Please try again in {format_duration(window.reset_seconds)}.",
            openai_type="tokens",
            headers={
                "Retry-After": retry_after(window.reset_seconds),
                **window_headers("tokens", window),
            },
        )


_Limit = tuple[_Scope, RateLimitItem, tuple[str, ...]]  # a scope, its limit, its ids


def _scopes(principal: Principal, end_user: str | None) -> list[_Scope]:
    """Narrowest first: the end user (when the key has an end-user tier), key, user."""
    scopes: list[_Scope] = []
    limits = principal.end_user_limits
    if end_user and limits is not None:
        scopes.append(
            _Scope(
                ("enduser", str(principal.key_id), end_user),
                f"end user '{end_user}'",
                limits.rpm,
                limits.tpm,
            )
        )
    key = principal.key_limits
    scopes.append(
        _Scope(("key", str(principal.key_id)), f"key {principal.key_prefix}…", key.rpm, key.tpm)
    )
    user = principal.user_limits
    scopes.append(
        _Scope(("user", str(principal.user_id)), f"user {principal.user_email}", user.rpm, user.tpm)
    )
    return scopes


def _store_down() -> GatewayError:
    return GatewayError(
        "The gateway cannot check your rate limits right now; please retry shortly.",
        status=503,
        code="rate_limits_unavailable",
        headers={"Retry-After": "1"},
    )


def _limits_of(principal: Principal, end_user: str | None) -> tuple[list[_Limit], list[_Limit]]:
    """The caller's (requests, tokens) per-minute limits, narrowest scope first."""
    scopes = _scopes(principal, end_user)
    requests: list[_Limit] = [
        (scope, RateLimitItemPerMinute(scope.rpm), ("requests", *scope.ids))
        for scope in scopes
        if scope.rpm is not None
    ]
    token_limits: list[_Limit] = [
        (scope, RateLimitItemPerMinute(scope.tpm), ("tokens", *scope.ids))
        for scope in scopes
        if scope.tpm is not None
    ]
    return requests, token_limits


def _every_request() -> bool:
    return True


def _drop_request_hooks(app: Flask, limiter: Limiter) -> None:
    """Unregister the hooks ``Limiter.init_app`` adds to every request: the check (a no-op
    here, see ``build_rate_limits``), the header injection (headers are off) and the
    context reset. Its storage and strategies stay, and the stages use them."""

    def owner(hook: Callable[..., Any]) -> object:
        if isinstance(hook, functools.partial):  # after_request: partial(method, limiter)
            return hook.args[0] if hook.args else None
        return getattr(hook, "__self__", None)  # bound methods

    every: list[dict[str | None, list[Any]]] = [
        cast(dict[str | None, list[Any]], app.before_request_funcs),
        cast(dict[str | None, list[Any]], app.after_request_funcs),
        cast(dict[str | None, list[Any]], app.teardown_request_funcs),
    ]
    for hooks in every:
        if None in hooks:
            hooks[None] = [hook for hook in hooks[None] if owner(hook) is not limiter]


def build_rate_limits(app: Flask, settings: Settings, redis: Redis | None) -> RateLimits:
    """A flask-limiter ``Limiter`` bound to ``app``: on the app's Redis, else in process."""
    options: dict[str, Any] = {"key_prefix": "mg:rl"}
    if redis is not None:
        options["connection_pool"] = redis.connection_pool  # one pool per process
    limiter = Limiter(
        get_remote_address,
        app=app,
        strategy="moving-window",
        storage_uri=settings.redis_url or "memory://",
        storage_options=options,
    )
    # The stages call the limiter's strategies themselves (above), with limits that come
    # from each caller's tier; no view is decorated. The extension's own per-request hooks
    # would only resolve limits there are none of (1-2 % of a worker's CPU under load):
    # every request is exempt from them, and they are taken off the app.
    limiter.request_filter(_every_request)
    _drop_request_hooks(app, limiter)
    return RateLimits(
        limiter,
        unauthenticated_rpm=settings.unauthenticated_rpm,
        is_fail_open=settings.limits_fail_open,
    )
