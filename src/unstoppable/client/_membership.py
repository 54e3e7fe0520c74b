"""The consumer's side of a consumer group (a mixin of
:class:`~unstoppable.client.consumer.Consumer`): polling the group member
for its target, forming a group (``initial_rebalance_delay_ms``), the
membership task, leaving for want of polls and rejoining, and applying
assignment changes at safe points. The semantics are described in the
consumer module's docstring; the state is the Consumer's own attributes.
"""
from __future__ import annotations

import asyncio
import inspect
import time

__all__ = ["GroupMembership"]


class GroupMembership:
    """Group membership for :class:`~unstoppable.client.consumer.Consumer`."""

    async def _poll_membership(self) -> bool:
        """Refresh the group view: mark partitions to give up, take free ones we
        should own. Returns True when something changed."""
        target = await self._member.poll()
        self._last_member_poll = self._loop.time()
        if not self._formed:
            target = self._while_forming(target)
        changed = False
        lost = self._member.take_lost()
        if lost:
            # Taken over while we were silent: not ours to commit or release.
            self._held -= lost
            self._pending_assign -= lost
            self._pending_revoke -= lost
            self._pending_lost |= lost
            self._fenced |= lost
            self._pos.stop(lost)
            changed = True
        give_up = (self._held - target) - self._pending_revoke
        if give_up:
            self._pending_revoke |= give_up
            self._pos.stop(give_up)  # hand out no more of them; the safe point revokes them
            changed = True
        for tp in sorted(target - self._held):
            if await self._member.try_acquire(tp):
                self._held.add(tp)
                self._pending_assign.add(tp)
                changed = True
        # A partition we gave up but got back before the safe point stays ours.
        back = self._pending_revoke & target
        if back:
            self._pending_revoke -= back
        return changed

    def _while_forming(self, target: set) -> set:
        """``initial_rebalance_delay_ms``: the part of ``target`` to take
        now; nothing while the group is forming (empty, and a member joined
        less than the delay ago), until ``_forming_until``."""
        f = self._member.formation() if self._initial_delay > 0 else None
        if f is not None:
            formed, joins = f
            if not formed and joins:
                # The same instant for every member that sees the same members.
                cap = self._max_poll_interval if self._max_poll_interval is not None else 300.0
                first, last = min(joins) / 1000.0, max(joins) / 1000.0
                until = min(last + self._initial_delay, first + max(cap, self._initial_delay))
                left = until - time.time()
                if left > 0:
                    self._forming_until = self._loop.time() + left
                    return set()
        self._formed = True
        self._forming_until = None
        return target

    async def _membership_loop(self) -> None:
        try:
            while not self._closed:
                pause = self._membership_poll
                if self._forming_until is not None:   # poll when the forming group takes its share
                    pause = min(pause, max(self._forming_until - self._loop.time(), 0.0) + 0.001)
                await asyncio.sleep(pause)
                if self._member is None:
                    continue  # left for want of polls: the next poll rejoins
                if (self._max_poll_interval is not None and not self._in_poll
                        and self._loop.time() - self._last_app_poll > self._max_poll_interval):
                    await self._leave_for_max_poll()
                    continue
                async with self._poll_lock:
                    if self._member is None or self._closed:
                        continue
                    changed = await self._poll_membership()
                if changed:
                    if self._interrupt is not None and not self._interrupt.done():
                        self._interrupt.set_result(None)
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            self._bg_error = e
            if self._interrupt is not None and not self._interrupt.done():
                self._interrupt.set_result(None)

    async def _leave_for_max_poll(self) -> None:
        """The application has not polled for ``max_poll_interval_ms``: leave
        the group, so the others take its partitions now (as Kafka's
        consumer does). Every partition held counts as lost: commits for it
        raise FencedMemberError, and the next safe point reports it revoked
        and joins the group again."""
        held = set(self._held)
        self._pending_lost |= held
        self._fenced |= held
        self._pos.stop(held)
        self._pending_assign.clear()
        self._pending_revoke.clear()
        self._left_for_poll = True
        await self._leave()

    async def _rejoin(self) -> None:
        self._left_for_poll = False
        self._formed = False
        kw = {} if self._session_timeout_ms is None else {
            "session_timeout_ms": self._session_timeout_ms}
        self._member = await self._backend.join_group(self._group, self._topics, **kw)
        async with self._poll_lock:
            await self._poll_membership()

    async def _safe_point(self) -> None:
        """Everything handed out before this call is handled: apply group
        changes and auto-commit."""
        if self._bg_error is not None:
            e, self._bg_error = self._bg_error, None
            raise e
        if self._left_for_poll and not self._closed:
            await self._rejoin()
        m = self._member
        since = self._loop.time() - self._last_member_poll
        if m is not None and not self._poll_lock.locked() and (
                since > self._membership_poll * 1.5
                or (m.session_timeout is not None and since > m.session_timeout / 2)):
            # The membership task is overdue: a consumer that always finds
            # records never lets its event loop idle, so the task's sleep
            # ends late (seconds, measured). Poll here instead: see members
            # that joined (and hand their share over), heartbeat, and after a
            # long silence (stopped, or the loop was blocked) learn which
            # partitions others took over before handing out more.
            async with self._poll_lock:
                await self._poll_membership()
        if self._pending_assign or self._pending_revoke or self._pending_lost:
            await self._apply_changes()
        if self._auto_commit and self._loop.time() - self._last_auto_commit >= self._auto_commit_interval:
            self._last_auto_commit = self._loop.time()
            offs = self._pos.moved()
            if offs:
                await self._commit_what_we_own(offs)

    async def _apply_changes(self) -> None:
        # Snapshots: the membership task may add more while we await below;
        # those wait for the next safe point.
        releasing = set(self._pending_revoke)
        lost = {tp for tp in self._pending_lost if tp in self._assigned}
        self._pending_lost.clear()
        revoked = {tp for tp in releasing if tp in self._assigned}
        assigned = self._pending_assign - releasing
        self._pending_assign -= assigned | releasing
        if revoked or lost:
            if self._on_change is not None:
                await _call(self._on_change, set(), revoked | lost)
            if self._auto_commit and revoked:
                moved = self._pos.moved()
                offs = {tp: moved[tp] for tp in revoked if tp in moved}
                if offs:
                    await self._commit_what_we_own(offs)
            for tp in revoked | lost:
                self._pos.remove(tp)
        for tp in releasing:
            if tp in self._held:
                self._held.discard(tp)
                await self._member.release(tp)
        self._pending_revoke -= releasing
        if assigned:
            await self._assign(assigned)
            if self._on_change is not None:
                await _call(self._on_change, set(assigned), set())


async def _call(fn, *args):
    r = fn(*args)
    if inspect.isawaitable(r):
        await r
