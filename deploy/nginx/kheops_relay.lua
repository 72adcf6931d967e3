-- The relay offload's memory (docs/relay-offload.md, "nginx's memory of a hand-over").
--
-- The app checks a relayed read and hands it over (X-Accel-Redirect to /_kheops_relay/<n>/…,
-- the token and our headers in X-Relay-* headers). With the hand-over it may say, in
-- X-Relay-Keep, that nginx may carry this browser's next reads of the same launch for a few
-- seconds without asking again: "<seconds> <launch id> <root> <study UID,…>". nginx keeps
-- that decision in shared memory (never on disk), under a hash of everything it depended on
-- besides the address (the launch, the scheme the app was told of, the Host and the whole
-- Cookie header), and
-- for as long as the app said: no longer than the app itself keeps a ready grant.
--
-- A later read is carried at once only when it is plainly one the app would hand over the
-- same way: GET or HEAD, an address of the narrowest shape (/launches/<id>/dicomweb/
-- studies/<one of the kept studies>/… with nothing encoded, no dot segments), headers the app
-- accepts. Anything else goes to the app, which stays the authority: this only remembers
-- what it said.

local M = {}

local decisions = ngx.shared.kheops_relay_decisions
local re_match = ngx.re.match
local re_find = ngx.re.find

-- Our security headers, as the internal locations name their variables ($relay_<name>).
local SECURITY = {
    "content_security_policy",
    "cross_origin_opener_policy",
    "cross_origin_resource_policy",
    "permissions_policy",
    "referrer_policy",
    "strict_transport_security",
    "x_content_type_options",
    "x_frame_options",
}

-- The browser's headers the internal locations send up (launcher/relay.py's
-- UPSTREAM_REQUEST_HEADERS): the app refuses a read whose value has a control character or
-- is over 1,024 characters, so such a read goes to it.
local FORWARDED = {
    "http_accept",
    "http_accept_encoding",
    "http_if_none_match",
    "http_if_modified_since",
    "http_if_match",
    "http_if_unmodified_since",
    "http_if_range",
    "http_range",
}

local KEEP = [[^([0-9]{1,3}(?:\.[0-9]{1,3})?) ([A-Za-z0-9_-]{1,32}) (/_kheops_relay/[0-9]{1,3}(?:/[A-Za-z0-9._~-]+)*) ([0-9.]{3,64}(?:,[0-9.]{3,64}){0,99})$]]

local read_pattern

-- <base>/launches/<id>/dicomweb/studies/<uid>[/<segment>…][?query]: the app's own allow-list
-- (launcher/relay.py's `check`) narrowed: at most 12 segments below dicomweb/, each of
-- A-Z a-z 0-9 . _ , - and neither "." nor "..", nothing percent-encoded in the path, a query
-- of at most 4,096 printable characters.
local function pattern(base_path)
    if read_pattern == nil then
        read_pattern = "^" .. base_path:gsub("%W", "\\%0")
            .. [[/launches/([A-Za-z0-9_-]{1,32})/dicomweb/studies/([0-9.]{3,64})]]
            .. [[((?:/(?!\.\.?(?:/|\?|$))[A-Za-z0-9._,-]{1,128}){0,10})]]
            .. [[(?:\?([\x21-\x7e]{0,4096}))?$]]
    end
    return read_pattern
end

local function key(launch_id)
    local cookie = ngx.var.http_cookie
    if cookie == nil then
        return nil
    end
    return ngx.sha1_bin(
        launch_id
            .. "\n"
            .. ngx.var.kheops_forwarded_proto
            .. "\n"
            .. (ngx.var.http_host or "")
            .. "\n"
            .. cookie
    )
end

-- In the internal locations: the hand-over's values into our variables, and the decision
-- kept when the app allows it. A read carried from memory (`carry_kept`) arrives with no
-- hand-over: its variables are already set.
function M.take_hand_over()
    local authorization = ngx.var.upstream_http_x_relay_authorization
    if authorization == nil then
        return
    end
    ngx.var.relay_authorization = authorization
    ngx.var.relay_server_timing = ngx.var.upstream_http_x_relay_server_timing or ""
    local values = { authorization }
    for i, name in ipairs(SECURITY) do
        local value = ngx.var["upstream_http_x_relay_" .. name] or ""
        ngx.var["relay_" .. name] = value
        values[i + 1] = value
    end
    local keep = ngx.var.upstream_http_x_relay_keep
    if keep == nil then
        return
    end
    local said = re_match(keep, KEEP, "jo")
    if said == nil then
        ngx.log(ngx.WARN, "kheops relay: an X-Relay-Keep nginx does not understand; not kept")
        return
    end
    local kept_key = key(said[2])
    if kept_key == nil then
        return
    end
    -- root, ",study,study,", then the token and our headers, one per line.
    local entry = said[3] .. "\n," .. said[4] .. ",\n" .. table.concat(values, "\n")
    local ok, err = decisions:set(kept_key, entry, tonumber(said[1]))
    if not ok then
        ngx.log(ngx.WARN, "kheops relay: a hand-over not kept: ", err)
    end
end

-- In front of the app: a read the app handed over a moment ago for this browser, carried at
-- once; anything else left to go on to the app.
function M.carry_kept(base_path)
    local method = ngx.var.request_method
    if method ~= "GET" and method ~= "HEAD" then
        return
    end
    local read = re_match(ngx.var.request_uri, pattern(base_path), "jo")
    if read == nil then
        return
    end
    for _, name in ipairs(FORWARDED) do
        local value = ngx.var[name]
        if value ~= nil and (#value > 1024 or re_find(value, [=[[\x00-\x1f\x7f]]=], "jo")) then
            return
        end
    end
    local kept_key = key(read[1])
    if kept_key == nil then
        return
    end
    local entry = decisions:get(kept_key)
    if entry == nil then
        return
    end
    local lines = {}
    for line in (entry .. "\n"):gmatch("([^\n]*)\n") do
        lines[#lines + 1] = line
    end
    if not lines[2]:find("," .. read[2] .. ",", 1, true) then
        return
    end
    ngx.var.relay_authorization = lines[3]
    ngx.var.relay_server_timing = ""
    for i, name in ipairs(SECURITY) do
        ngx.var["relay_" .. name] = lines[i + 3]
    end
    return ngx.exec(lines[1] .. "/studies/" .. read[2] .. read[3], read[4] or "")
end

return M
