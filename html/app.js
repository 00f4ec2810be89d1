/*
 * Who's online: the page ngx_http_presence_module serves.
 *
 * Talks to three locations, relative to this page (README: HTTP API):
 *   POST api/heartbeat {"user_id": name, "session_id": tab}
 *                      -> {"user_id","room","ttl","online","sessions"}
 *   POST api/leave     {"user_id": name, "session_id": tab}
 *                      -> {"user_id","room","online","sessions"}
 *   GET  api/online (If-None-Match) -> {"room","ttl","count","users"} or 304
 *   GET  api/stream    (EventSource)   -> text/event-stream: `snapshot`
 *                      (what api/online answers), then `join` and `leave`
 *                      ({"user_id","count"}), `unavailable` while Redis is
 *                      lost (docs: presence_stream)
 *
 * The list follows api/stream: a snapshot replaces it, each join or leave
 * whose id is greater than the last one applied changes it, `unavailable`
 * puts up the outage banner and the next snapshot takes it down. While the
 * stream delivers, the page does not poll at all. It polls api/online
 * every 2 s with If-None-Match instead when the stream is not there:
 * no EventSource in the browser; the stream answers an error status
 * (404 without a stream location, 503 too_many_streams: EventSource
 * closes); or no snapshot arrives within STREAM_WAIT_MS of opening or of
 * reconnecting (a proxy that buffers the stream, one that cuts it off
 * again and again). While polling it tries the stream again now and then
 * (STREAM_RETRY_MS, doubling up to STREAM_RETRY_MAX_MS) and stops polling
 * once that delivers a snapshot. #live's data-feed says which it is:
 * "stream" (set at the first snapshot) or "poll".
 *
 * For tests: `?poll=0` in the page's address turns the polling fallback
 * off (a stream that fails then leaves the list as it is), so that a list
 * that changes can only have changed through the stream.
 *
 * Each tab is a session of its own ("tab-" and 12 hex digits, kept across
 * a reload): a person is online while any of their tabs is, and a tab's
 * leave ends its own session only. "sessions" counts the person's live
 * sessions.
 *
 * User ids go into the page with .text() only, never as HTML.
 */
(function ($) {
  'use strict';

  if (!$) {
    // nginx did not serve vendor/jquery.min.js: say so instead of a blank
    // page. The one place with plain DOM calls, as jQuery is what is missing.
    var banner = document.getElementById('banner');
    document.getElementById('banner-detail').textContent =
      'vendor/jquery.min.js did not load; check the nginx location that serves it.';
    banner.querySelector('.banner-retry').textContent = '';
    banner.hidden = false;
    document.body.className += ' is-failing';
    return;
  }

  var API_HEARTBEAT = 'api/heartbeat';
  var API_LEAVE = 'api/leave';
  var API_ONLINE = 'api/online';
  var API_STREAM = 'api/stream';

  // Both timers are armed from a request's completion, never from a timer
  // callback, so Chrome's heavy throttling of chained timers in hidden tabs
  // (one wake-up a minute) does not apply: a background tab stays online.
  var POLL_MS = 2000;         // list refresh, start to start
  var RETRY_MS = 1000;        // heartbeat retry while the API is failing
  var TIMEOUT_MS = 8000;      // give up on one request after this
  var STREAM_WAIT_MS = 4000;  // a stream opened must send its snapshot within this
  var STREAM_RECONNECT_MS = 2000;   // the module's `retry:`, added after an error
  var STREAM_RETRY_MS = 30000;      // polling: try the stream again after this,
  var STREAM_RETRY_MAX_MS = 300000; // ...doubling each time up to this
  // ?poll=0: no polling fallback (for tests; see the header)
  var NO_POLL = /(?:^\?|&)poll=0(?:&|$)/.test(window.location.search);
  var KEY_NAME = 'presence.name';
  var KEY_ONLINE = 'presence.online';
  var KEY_SESSION = 'presence.session';   // in sessionStorage, see takeSession

  var state = {
    name: '',          // the name we are (or are going) online as
    session: '',       // this tab's session_id
    wanted: false,     // the person asked to be online
    online: false,     // a heartbeat for `name` has succeeded
    hbFailing: false,  // ...but the latest one did not get through
    ttl: null,         // seconds, from the last reply
    hbTimer: null,
    hbSeq: 0,          // bumps cancel replies of older heartbeats
    hbXhr: null,       // the heartbeat in flight, if any
    pollTimer: null,
    pollSeq: 0,
    etag: null,
    users: [],
    count: 0,
    feed: null,        // 'stream' once it delivered a snapshot, 'poll' after a fallback
    es: null,          // the EventSource, while one is open
    esLive: false,     // ...and it has delivered a snapshot since it (re)connected
    esErrors: 0,       // errors since its last snapshot
    esWait: null,      // timer: no snapshot in time means no stream
    esRetry: null,     // timer: polling, try the stream again
    esRetryMs: STREAM_RETRY_MS,
    lastId: null,      // id of the last snapshot or event applied (a decimal string)
    failing: false
  };

  var $name, $goOnline, $goOffline, $nameError, $me, $meText, $users, $count,
      $empty, $more, $banner, $bannerDetail, $room, $ttl, $live;

  /* ---- storage, which may be missing or refuse writes ---- */

  // area: 'localStorage' (the default) or 'sessionStorage'; reading
  // window[area] itself can throw where storage is disabled
  function store(key, value, area) {
    try {
      var storage = window[area || 'localStorage'];
      if (value === null) {
        storage.removeItem(key);
      } else {
        storage.setItem(key, value);
      }
    } catch (e) { /* private mode or disabled: the page still works */ }
  }

  function recall(key, area) {
    try {
      return window[area || 'localStorage'].getItem(key);
    } catch (e) {
      return null;
    }
  }

  /* ---- this tab's session ---- */

  var SESSION_RE = /^tab-[0-9a-f]{12}$/;

  function newSessionId() {
    var bytes = new Uint8Array(6);
    var hex = 'tab-';
    if (window.crypto && typeof window.crypto.getRandomValues === 'function') {
      window.crypto.getRandomValues(bytes);
    } else {
      for (var i = 0; i < bytes.length; i++) {
        bytes[i] = Math.floor(Math.random() * 256);
      }
    }
    bytes.forEach(function (b) {
      hex += (b < 16 ? '0' : '') + b.toString(16);
    });
    return hex;
  }

  // The id lives in memory while the page is up and in sessionStorage only
  // from pagehide (keepSession) until the tab's next page takes it out
  // again: a reload keeps its session, while a tab duplicated from this
  // one, which starts with a copy of sessionStorage, finds no id there and
  // makes its own. Without sessionStorage each load is a new session.
  function takeSession() {
    var id = recall(KEY_SESSION, 'sessionStorage');
    store(KEY_SESSION, null, 'sessionStorage');
    return typeof id === 'string' && SESSION_RE.test(id) ? id : newSessionId();
  }

  function keepSession() {
    store(KEY_SESSION, state.session, 'sessionStorage');
  }

  /* ---- replies, which may be anything at all ---- */

  // The module answers objects of the shape above; a proxy, a cache or a
  // half-written reply may hand over any JSON: null, an array, a string
  // where a number belongs. Nothing read from a reply may throw.
  function isObject(v) {
    return v !== null && typeof v === 'object' && !Array.isArray(v);
  }

  // presence_ttl in seconds (a fraction when it is not whole seconds), or
  // null when the reply has none that makes sense
  function ttlOf(reply) {
    var ttl = reply.ttl;
    return typeof ttl === 'number' && isFinite(ttl) && ttl > 0 ? ttl : null;
  }

  /* ---- errors ---- */

  // The module answers {"error": code, "message": sentence}; a proxy or a
  // dropped connection may answer anything, or nothing.
  function errorOf(xhr) {
    var body = null;
    try {
      body = JSON.parse(xhr.responseText);
    } catch (e) { /* not JSON */ }
    return {
      status: xhr.status,
      // 503/504, any other 5xx, or no answer at all: the service is in
      // trouble, not the person's input
      outage: xhr.status === 0 || xhr.status >= 500,
      code: body && typeof body.error === 'string' ? body.error : null,
      message: body && typeof body.message === 'string' ? body.message : null
    };
  }

  // What every failed request does: an outage puts up the banner (whoever
  // made the request keeps retrying on its own timer). Anything else is
  // left to the caller, which gets the error back.
  function failed(xhr) {
    var err = errorOf(xhr);
    if (err.outage) {
      showOutage(err);
    }
    return err;
  }

  function showOutage(err) {
    var detail;
    if (err.code === 'redis_unavailable') {
      detail = 'The presence store cannot be reached.';
    } else if (err.code === 'redis_timeout') {
      detail = 'The presence store is taking too long to answer.';
    } else if (err.status === 0) {
      detail = 'The server cannot be reached.';
    } else {
      detail = 'The server answered with an error (HTTP ' + err.status + ').';
    }
    $bannerDetail.text(detail);
    if (!state.failing) {
      state.failing = true;
      $banner.prop('hidden', false);
      $('body').addClass('is-failing');
    }
  }

  function recovered() {
    if (state.failing) {
      state.failing = false;
      $banner.prop('hidden', true);
      $('body').removeClass('is-failing');
    }
  }

  function showNameError(message) {
    $nameError.text(message).prop('hidden', false);
    $name.attr('aria-invalid', 'true');
  }

  function clearNameError() {
    $nameError.text('').prop('hidden', true);
    $name.removeAttr('aria-invalid');
  }

  /* ---- requests ---- */

  // what a heartbeat and a leave send: the name and this tab's session
  function bodyOf(name) {
    return JSON.stringify({ user_id: name, session_id: state.session });
  }

  function post(url, name) {
    return $.ajax({
      url: url,
      method: 'POST',
      contentType: 'application/json',
      data: bodyOf(name),
      dataType: 'json',
      timeout: TIMEOUT_MS
    });
  }

  function heartbeat() {
    var seq = state.hbSeq;

    clearTimeout(state.hbTimer);
    state.hbTimer = null;

    var xhr = state.hbXhr = post(API_HEARTBEAT, state.name);
    xhr.always(function () {
      if (state.hbXhr === xhr) {
        state.hbXhr = null;
      }
    });
    xhr.done(function (data) {
      if (seq !== state.hbSeq) {
        return;
      }
      var reply = isObject(data) ? data : {};
      recovered();
      // where nginx takes the identity from authentication
      // (presence_heartbeat $remote_user), the server's name is the one
      if (typeof reply.user_id === 'string' && reply.user_id !== ''
          && reply.user_id !== state.name) {
        state.name = reply.user_id;
        render();
      }
      state.ttl = ttlOf(reply) || state.ttl || 10;
      $ttl.text(state.ttl);
      if (!state.online) {
        state.online = true;
        state.hbFailing = false;
        store(KEY_ONLINE, '1');
        render();
        pollNow();
      } else if (state.hbFailing) {
        state.hbFailing = false;
        render();
      }
      // the interval the server's TTL asks for: half of it
      state.hbTimer = setTimeout(heartbeat, Math.max(500, state.ttl * 500));

    }).fail(function (xhr) {
      if (seq !== state.hbSeq) {
        return;
      }
      var err = failed(xhr);
      if (err.outage) {
        if (state.online && !state.hbFailing) {
          state.hbFailing = true;
          render();
        }
        state.hbTimer = setTimeout(heartbeat, RETRY_MS);
        return;
      }
      // 4xx: this name (or request) will not be accepted by retrying
      stop();
      store(KEY_ONLINE, null);
      showNameError(err.message || 'That name cannot be used (HTTP ' + err.status + ').');
      $name.trigger('focus');
      render();
    });
  }

  function stop() {
    state.hbSeq++;
    clearTimeout(state.hbTimer);
    state.hbTimer = null;
    state.wanted = false;
    state.online = false;
    state.hbFailing = false;
  }

  function goOnline(name) {
    clearNameError();
    state.name = name;
    state.wanted = true;
    state.online = false;
    state.hbSeq++;
    store(KEY_NAME, name);
    render();
    heartbeat();
  }

  function goOffline() {
    var name = state.name;
    // a heartbeat still on its way would land after the leave and put us
    // back for a whole TTL: let it arrive first
    var inFlight = state.hbXhr || $.Deferred().resolve();
    stop();
    store(KEY_ONLINE, null);
    render();
    $.when(inFlight).always(function () {
      leave(name);
    });
  }

  function leave(name) {
    post(API_LEAVE, name).done(function () {
      recovered();
    }).fail(function (xhr) {
      failed(xhr);
    }).always(pollNow);
  }

  // The tab is going away (closed, reloaded, navigated): say so at once,
  // so the others see this tab's session end now rather than when the TTL
  // runs out (after presence_leave_grace, if set: a reload heartbeats the
  // same session again within it, and nobody sees us go). Other tabs of
  // ours stay online. A string body goes out as text/plain, which the
  // module accepts.
  function leaveOnExit() {
    keepSession();
    if (!state.wanted || !state.name) {
      return;
    }
    var body = bodyOf(state.name);
    if (navigator.sendBeacon && navigator.sendBeacon(API_LEAVE, body)) {
      return;
    }
    try {   // no beacon, or its queue is full
      fetch(API_LEAVE, { method: 'POST', body: body, keepalive: true,
        headers: { 'Content-Type': 'text/plain;charset=UTF-8' } });
    } catch (e) { /* nothing more to try: the TTL will drop us */ }
  }

  function poll() {
    var seq = ++state.pollSeq;
    var started = Date.now();
    var headers = {};

    clearTimeout(state.pollTimer);
    state.pollTimer = null;
    if (state.etag) {
      headers['If-None-Match'] = state.etag;
    }

    $.ajax({
      url: API_ONLINE,
      method: 'GET',
      dataType: 'json',
      headers: headers,
      timeout: TIMEOUT_MS
    }).done(function (data, textStatus, xhr) {
      if (seq !== state.pollSeq) {
        return;
      }
      recovered();
      if (xhr.status === 304) {
        return;               // nobody came or went: leave the screen alone
      }
      state.etag = xhr.getResponseHeader('ETag');
      showList(data);
    }).fail(function (xhr) {
      if (seq === state.pollSeq) {
        failed(xhr);
      }
    }).always(function () {
      if (seq !== state.pollSeq) {
        return;
      }
      state.pollTimer = setTimeout(poll, Math.max(0, POLL_MS - (Date.now() - started)));
    });
  }

  // the list at once, where the page polls; the stream needs no asking
  function pollNow() {
    if (state.feed === 'poll' && !NO_POLL) {
      poll();
    }
  }

  function stopPolling() {
    state.pollSeq++;          // a poll in flight is ignored when it answers
    clearTimeout(state.pollTimer);
    state.pollTimer = null;
  }

  /* ---- the live stream ---- */

  // ids are decimal integers from Redis's clock, possibly past 2^53: kept
  // and compared as strings of digits (without leading zeros), never as
  // numbers. null when the event has none.
  function idOf(e) {
    var id = typeof e.lastEventId === 'string' ? e.lastEventId : '';
    return /^[0-9]+$/.test(id) ? id.replace(/^0+(?=.)/, '') : null;
  }

  function idAfter(id, last) {
    if (id === null) {
      return false;
    }
    if (last === null) {
      return true;
    }
    return id.length !== last.length ? id.length > last.length : id > last;
  }

  // the module's order: bytewise in UTF-8, which is code point order (not
  // the UTF-16 code unit order of a plain sort)
  function bytewise(a, b) {
    var i = 0;
    var j = 0;
    while (i < a.length && j < b.length) {
      var x = a.codePointAt(i);
      var y = b.codePointAt(j);
      if (x !== y) {
        return x < y ? -1 : 1;
      }
      i += x > 0xffff ? 2 : 1;
      j += y > 0xffff ? 2 : 1;
    }
    return (i < a.length ? 1 : 0) - (j < b.length ? 1 : 0);
  }

  function parsed(e) {
    try {
      var data = JSON.parse(e.data);
      return isObject(data) ? data : null;
    } catch (err) {
      return null;
    }
  }

  function canStream() {
    return typeof window.EventSource === 'function';
  }

  // Opens the stream (again). Until it delivers a snapshot the page shows
  // what it showed, and polls only if it was polling already.
  function openStream() {
    var es;

    closeStream();
    try {
      es = new window.EventSource(API_STREAM);
    } catch (e) {
      streamFailed();
      return;
    }
    state.es = es;
    state.esLive = false;
    state.esErrors = 0;
    waitForSnapshot(STREAM_WAIT_MS);

    // every handler first checks that its stream is still the one open
    es.addEventListener('snapshot', function (e) {
      if (state.es === es) {
        onSnapshot(e);
      }
    });
    es.addEventListener('join', function (e) {
      if (state.es === es) {
        onChange(e, true);
      }
    });
    es.addEventListener('leave', function (e) {
      if (state.es === es) {
        onChange(e, false);
      }
    });
    es.addEventListener('unavailable', function (e) {
      if (state.es === es) {
        onUnavailable(e);
      }
    });
    es.onerror = function () {
      if (state.es !== es) {
        return;
      }
      // CLOSED: the stream answered an error status (or not an event
      // stream at all): EventSource gives up, and so do we
      if (es.readyState === window.EventSource.CLOSED) {
        streamFailed();
        return;
      }
      // CONNECTING: the connection ended, EventSource reconnects by itself
      // after `retry:`. Events resume only after the fresh snapshot; two
      // errors without one between them is a stream that does not work.
      state.esLive = false;
      if (++state.esErrors >= 2) {
        streamFailed();
        return;
      }
      waitForSnapshot(STREAM_RECONNECT_MS + STREAM_WAIT_MS);
    };
  }

  function closeStream() {
    clearTimeout(state.esWait);
    state.esWait = null;
    if (state.es) {
      state.es.onerror = null;
      state.es.close();
      state.es = null;
    }
    state.esLive = false;
  }

  function waitForSnapshot(ms) {
    clearTimeout(state.esWait);
    state.esWait = setTimeout(function () {
      state.esWait = null;
      if (!state.esLive) {
        streamFailed();
      }
    }, ms);
  }

  // The stream is not there (or stopped working): poll, and try it again
  // later.
  function streamFailed() {
    closeStream();
    if (state.feed !== 'poll') {
      startPolling();
    }
    clearTimeout(state.esRetry);
    state.esRetry = setTimeout(openStream, state.esRetryMs);
    state.esRetryMs = Math.min(state.esRetryMs * 2, STREAM_RETRY_MAX_MS);
  }

  function onSnapshot(e) {
    var data = parsed(e);
    if (!data) {
      return;                 // no baseline: as if it had not come
    }
    clearTimeout(state.esWait);
    state.esWait = null;
    state.esLive = true;
    state.esErrors = 0;
    state.lastId = idOf(e);
    if (state.feed !== 'stream') {
      state.feed = 'stream';
      $live.attr({ 'data-feed': 'stream', title: 'Updated as people come and go' });
      stopPolling();
      clearTimeout(state.esRetry);
      state.esRetry = null;
      state.esRetryMs = STREAM_RETRY_MS;
    }
    recovered();
    showList(data);
  }

  // A join or a leave: applied only on top of this connection's snapshot,
  // and only when its id is greater than the last one applied. (One that
  // cannot be applied, not being JSON, still takes its id: an event
  // without an id field, which EventSource hands over with the id before
  // it, is then not newer either.) With a list cut at
  // presence_online_limit (count above the names), a join adds the name
  // without knowing whose name the listing would have dropped for it.
  function onChange(e, joined) {
    var id = idOf(e);
    if (!state.esLive || !idAfter(id, state.lastId)) {
      return;
    }
    state.lastId = id;
    var data = parsed(e);
    if (!data || typeof data.user_id !== 'string') {
      return;
    }
    var name = data.user_id;
    var users = state.users.filter(function (u) { return u !== name; });
    var count = data.count;
    if (joined) {
      users.push(name);
      users.sort(bytewise);
    }
    if (!Number.isSafeInteger(count) || count < 0) {
      // keep the "and N more" as it was
      count = users.length + Math.max(0, state.count - state.users.length);
    }
    showList({ users: users, count: count });
  }

  // Redis is lost: the banner as for a 503 until the next snapshot.
  function onUnavailable(e) {
    var data = parsed(e) || {};
    showOutage({
      status: 503,
      outage: true,
      code: typeof data.error === 'string' ? data.error : 'redis_unavailable',
      message: typeof data.message === 'string' ? data.message : null
    });
  }

  // Where the list comes from: the stream where the browser has one, else
  // polling.
  function startFeed() {
    clearTimeout(state.esRetry);
    state.esRetry = null;
    state.esRetryMs = STREAM_RETRY_MS;
    if (canStream()) {
      openStream();
    } else {
      startPolling();
    }
  }

  function startPolling() {
    state.feed = 'poll';
    $live.attr({ 'data-feed': 'poll', title: 'Refreshed every 2 seconds' });
    if (!NO_POLL) {
      poll();
    }
  }

  function stopFeed() {
    closeStream();
    clearTimeout(state.esRetry);
    state.esRetry = null;
    stopPolling();
    state.feed = null;
  }

  /* ---- drawing ---- */

  function hueOf(name) {
    var h = 0;
    for (var i = 0; i < name.length; i++) {
      h = (h * 31 + name.charCodeAt(i)) >>> 0;
    }
    return h % 360;
  }

  function initialOf(name) {
    var chars = Array.from(name.trim() || name);
    return (chars[0] || '?').toUpperCase();
  }

  function userRow(name) {
    var $li = $('<li class="user"></li>');
    var $avatar = $('<span class="avatar" aria-hidden="true"></span>')
      .text(initialOf(name))
      .append('<span class="status-dot"></span>');
    // a string: jQuery before 3.4 added "px" to a number, custom property or not
    $avatar.css('--hue', String(hueOf(name)));
    $li.append($avatar,
      $('<span class="user-name"></span>').text(name),
      $('<span class="you-tag">you</span>'));
    // kept in jQuery's data store, not in an attribute: the id never
    // reaches the markup
    $li.data('user', name);
    return $li;
  }

  // Updates the list in place: rows of people still online stay put, so
  // screen readers announce only who came and who left.
  function showList(data) {
    var reply = isObject(data) ? data : {};
    // Names are strings, each listed once: a row is found by its name, and
    // the name goes through .trim() and .text().
    var wanted = new Set();
    var users = (Array.isArray(reply.users) ? reply.users : []).filter(function (name) {
      if (typeof name !== 'string' || wanted.has(name)) {
        return false;
      }
      wanted.add(name);
      return true;
    });
    // the room's full count, which can be more than the names listed
    var count = Number.isSafeInteger(reply.count) && reply.count >= 0
      ? reply.count : users.length;
    var ttl = ttlOf(reply);
    var rows = new Map();

    $users.children().each(function () {
      var $row = $(this);
      var name = $row.data('user');
      if (wanted.has(name) && !rows.has(name)) {
        rows.set(name, $row);
      } else {
        $row.remove();
      }
    });

    // Rows 0..i-1 are in place: row i belongs right after row i-1 (first
    // when i is 0). Only a row that is not there already is moved.
    var $prev = $();
    users.forEach(function (name) {
      var $row = rows.get(name) || userRow(name).addClass('is-new');
      var $at = $prev.length ? $prev.next() : $users.children().first();
      if (!$at.is($row)) {
        if ($prev.length) {
          $prev.after($row);
        } else {
          $users.prepend($row);
        }
      }
      $prev = $row;
    });

    state.users = users;
    state.count = count;
    $count.text(count).toggleClass('is-zero', count === 0);
    $empty.prop('hidden', users.length > 0);
    if (count > users.length) {
      $more.text('and ' + (count - users.length) + ' more').prop('hidden', false);
    } else {
      $more.prop('hidden', true);
    }
    if (typeof reply.room === 'string') {
      $room.text(reply.room);
    }
    if (ttl) {
      $ttl.text(ttl);
    }
    document.title = count > 0 ? 'Who\'s online (' + count + ')' : 'Who\'s online';
    markSelf();
    setTimeout(function () { $users.children('.is-new').removeClass('is-new'); }, 400);
  }

  function markSelf() {
    var self = state.online ? state.name : null;
    $users.children().each(function () {
      var $row = $(this);
      var mine = self !== null && $row.data('user') === self;
      $row.toggleClass('is-self', mine);
      if (mine) {
        $row.attr('aria-label', self + ' (you)');
      } else {
        $row.removeAttr('aria-label');
      }
    });
  }

  // What #me-text says in each state (#me's data-state): the name, where
  // there is one, goes in as text between `before` and `after`.
  var ME_TEXT = {
    online:       { named: true,  before: 'You\'re online as ', after: '' },
    reconnecting: { named: true,  before: 'Reconnecting as ',   after: '…' },
    joining:      { named: true,  before: 'Going online as ',   after: '…' },
    offline:      { named: false, before: 'You\'re offline.',   after: '' }
  };

  function render() {
    var st = state.online ? (state.hbFailing ? 'reconnecting' : 'online')
      : state.wanted ? 'joining' : 'offline';
    var say = ME_TEXT[st];
    $me.attr('data-state', st);
    $meText.text(say.before);
    if (say.named) {
      // `after` is one of the constants above: jQuery appends a string with
      // no markup in it as a text node (and an empty one not at all)
      $meText.append($('<strong></strong>').text(state.name), say.after);
    }
    $name.prop('readOnly', state.wanted);
    $goOnline.prop('hidden', state.wanted);
    $goOffline.prop('hidden', !state.wanted);
    markSelf();
  }

  /* ---- start ---- */

  $(function () {
    $name = $('#name');
    $goOnline = $('#go-online');
    $goOffline = $('#go-offline');
    $nameError = $('#name-error');
    $me = $('#me');
    $meText = $('#me-text');
    $users = $('#users');
    $count = $('#count');
    $empty = $('#empty');
    $more = $('#more');
    $banner = $('#banner');
    $bannerDetail = $('#banner-detail');
    $room = $('#room');
    $ttl = $('#ttl');
    $live = $('#live');

    $('#join').on('submit', function (e) {
      e.preventDefault();
      if (state.wanted) {
        return;
      }
      var name = $name.val().trim();
      if (!name) {
        showNameError('Enter a name to go online.');
        $name.trigger('focus');
        return;
      }
      goOnline(name);
    });

    $goOffline.on('click', function () {
      goOffline();
      $name.trigger('focus');
    });

    $name.on('input', function () {
      if (!$nameError.prop('hidden')) {
        clearNameError();
      }
    });

    $(window).on('pagehide', function () {
      leaveOnExit();
      stopFeed();     // back from the back/forward cache, it starts again
    });

    // Back from the back/forward cache: the leave went out on pagehide, so
    // come back online (the same session) and catch up with the list.
    // (jQuery's event does not copy `persisted`: it is on the browser's
    // own event.)
    $(window).on('pageshow', function (e) {
      if (e.originalEvent.persisted) {
        store(KEY_SESSION, null, 'sessionStorage');   // live again: see takeSession
        if (state.wanted) {
          state.online = false;
          state.hbSeq++;
          heartbeat();
        }
        startFeed();
      }
    });

    // Back to a tab that sat in the background: catch up at once (where
    // the page polls; a stream kept it up to date).
    $(document).on('visibilitychange', function () {
      if (document.visibilityState === 'visible') {
        pollNow();
      }
    });

    state.session = takeSession();
    var saved = recall(KEY_NAME);
    if (saved) {
      $name.val(saved);
    }
    render();
    if (saved && recall(KEY_ONLINE) === '1') {
      goOnline(saved);
    }
    startFeed();
  });
}(window.jQuery));
