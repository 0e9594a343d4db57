-- The JSON API's own rules, on both sides of the transcoder. Envoy runs this file after a generated prelude that
-- defines CONFIG (see recommender.gateway.envoy): the origins allowed to call across sites, and each JSON body's
-- fields, read from the descriptor set.
--
-- On the way in, every request: a header name that gRPC metadata cannot carry: 400.
-- On the way in (requests that change state):
--   * a browser's cross-origin request (an Origin that is neither this service's nor a configured one): 403;
--   * a call that needs a credential and comes without one: 401, before anything reads its body;
--   * a body that is not declared JSON: 415 (a cross-site form cannot send JSON without asking first);
--   * a body field the method does not have (a typo would be dropped silently and half a write done), or a
--     boolean that is not a JSON boolean, or objects and arrays nested past MAX_DEPTH: 400 naming it.
-- On the way out: every error answer becomes {"detail": "<message>"}.
--
-- Replies made here go out through local_reply_config, which gives them the same {"detail": ...} shape.

local SHOWN = 40  -- characters of a client's key quoted back
local MAX_DEPTH = 32  -- objects and arrays inside each other in a request body

local function shorten(text)
  if #text <= SHOWN then
    return text
  end
  return string.sub(text, 1, SHOWN) .. "..."
end

local function refuse(handle, status, message)
  handle:respond({[":status"] = tostring(status), ["content-type"] = "text/plain"}, message)
end

-- Origins match when scheme, host and port agree; the request's own is http(s)://<Host header>.
local function own_origin(origin, authority)
  local host = string.match(origin, "^https?://(.+)$")
  return host ~= nil and host == authority
end

-- A body check failed: raised with this marker so that pcall can tell it from a bug.
local Problem = {}

local function problem(message)
  error(setmetatable({message = message}, Problem), 0)
end

local function skip_space(s, i)
  return string.find(s, "[^ \t\r\n]", i) or (#s + 1)
end

-- The end of the JSON string starting at i (a quote) and its raw text; nil when it does not end.
local function read_string(s, i)
  local j = i + 1
  while true do
    local k = string.find(s, '["\\]', j)
    if k == nil then
      return nil
    end
    if string.byte(s, k) == 92 then  -- a backslash: skip what it escapes
      j = k + 2
    else
      return k + 1, string.sub(s, i + 1, k - 1)
    end
  end
end

local check_value

-- After an item of an object or an array that `closer` ends: the index after the closer and true, the next item's
-- index and false, or nil for malformed JSON.
local function next_item(s, i, closer)
  i = skip_space(s, i)
  local c = string.sub(s, i, i)
  if c == closer then
    return i + 1, true
  elseif c ~= "," then
    return nil
  end
  return skip_space(s, i + 1), false
end

-- Checks an object at i against `fields` (nil: any keys); returns the index after it, nil for malformed JSON
-- (which the transcoder then refuses in its own words).
local function check_object(s, i, fields, path, depth)
  i = skip_space(s, i + 1)
  if string.sub(s, i, i) == "}" then
    return i + 1
  end
  while true do
    if string.sub(s, i, i) ~= '"' then
      return nil
    end
    local after, key = read_string(s, i)
    if after == nil then
      return nil
    end
    local field = nil
    if fields ~= nil then
      field = fields[key]
      if field == nil then
        problem('unknown field "' .. shorten(path .. key) .. '" in the request body')
      end
    end
    i = skip_space(s, after)
    if string.sub(s, i, i) ~= ":" then
      return nil
    end
    i = check_value(s, skip_space(s, i + 1), field, path .. key, depth)
    if i == nil then
      return nil
    end
    local last
    i, last = next_item(s, i, "}")
    if i == nil or last then
      return i
    end
  end
end

-- Checks the value at i against `field` ({kind, message}; nil: anything).
check_value = function(s, i, field, path, depth)
  local c = string.sub(s, i, i)
  if (c == "{" or c == "[") and depth >= MAX_DEPTH then
    problem("the request body is nested more than " .. MAX_DEPTH .. " levels deep, the most this API takes")
  end
  local kind = field and field.kind
  if (kind == "list" or (field and field.repeated)) and c ~= "[" and string.sub(s, i, i + 3) ~= "null" then
    problem('"' .. shorten(path) .. '" must be an array')
  end
  if field and not field.repeated and kind ~= "list" and c == "[" then
    problem('"' .. shorten(path) .. '" must not be an array')
  end
  if c == "{" then
    local fields = nil
    if kind == "message" then
      fields = CONFIG.messages[field.message]
    end
    if path ~= "" then
      path = path .. "."
    end
    return check_object(s, i, fields, path, depth + 1)
  elseif c == "[" then
    i = skip_space(s, i + 1)
    if string.sub(s, i, i) == "]" then
      return i + 1
    end
    local index = 0
    local item = nil  -- a repeated field's items are what the field says; a list's are anything
    if field and field.repeated then
      item = {kind = field.kind, message = field.message}
    end
    while true do
      if item ~= nil and string.sub(s, i, i + 3) == "null" then  -- a repeated field's item is never left out
        problem('"' .. shorten(path .. "[" .. index .. "]") .. '" must not be null')
      end
      i = check_value(s, i, item, path .. "[" .. index .. "]", depth + 1)
      if i == nil then
        return nil
      end
      local last
      i, last = next_item(s, i, "]")
      if i == nil or last then
        return i
      end
      index = index + 1
    end
  elseif c == '"' then
    local after, text = read_string(s, i)
    if after ~= nil and kind == "bool" then
      problem('"' .. shorten(path) .. '" must be true or false, got "' .. shorten(text) .. '"')
    end
    return after
  else
    local token = string.match(s, "^[%w%.%+%-]+", i)
    if token == nil then
      return nil
    end
    if kind == "bool" and token ~= "true" and token ~= "false" and token ~= "null" then
      problem('"' .. shorten(path) .. '" must be true or false, got ' .. shorten(token))
    end
    return i + #token
  end
end

-- The message a POST path's JSON body is, or nil.
local function body_message(path)
  for _, body in ipairs(CONFIG.bodies) do
    if string.match(path, body.pattern) then
      return body.message
    end
  end
  return nil
end

-- Whether the call needs a credential (one is configured, and it changes state).
local function guarded(method, path)
  for _, call in ipairs(CONFIG.guarded) do
    if call.method == method and string.match(path, call.pattern) then
      return true
    end
  end
  return false
end

-- A header name gRPC metadata cannot carry (it takes a-z, 0-9, '-', '_' and '.'), or nil.
local function unfit_header(headers)
  for key, _ in pairs(headers) do
    if string.byte(key, 1) ~= 58 and string.find(key, "[^a-z0-9_.-]") then  -- 58: ':' of pseudo-headers
      return key
    end
  end
  return nil
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local unfit = unfit_header(headers)
  if unfit ~= nil then
    refuse(handle, 400, 'the header name "' .. shorten(unfit) .. '" is not allowed: names take a-z, 0-9, "-", "_" and "."')
    return
  end
  local method = headers:get(":method")
  local bare = string.match(headers:get(":path") or "", "^[^?]*")
  local taken = CONFIG.fixed[bare]
  if taken ~= nil and method ~= "OPTIONS" and string.find(", " .. taken .. ",", ", " .. method .. ",", 1, true) == nil then
    local only = string.gsub(taken, ", ", " or ")
    handle:respond({[":status"] = "405", ["content-type"] = "text/plain", ["allow"] = taken}, bare .. " takes " .. only .. " only")
    return
  end
  if method == "GET" or method == "HEAD" or method == "OPTIONS" then
    return
  end
  local origin = headers:get("origin")
  if origin ~= nil and not own_origin(origin, headers:get(":authority") or "") and not CONFIG.cors_origins[origin] then
    refuse(handle, 403, "cross-origin request refused: " .. shorten(origin) .. " is not this service's origin")
    return
  end
  if headers:get("authorization") == nil and headers:get("x-api-key") == nil and guarded(method, bare) then
    refuse(handle, 401, CONFIG.missing_credentials)  -- before anything reads the body
    return
  end
  local length = tonumber(headers:get("content-length") or "0") or 0
  if length == 0 and headers:get("transfer-encoding") == nil then
    return  -- no body (POST /api/v1/retrain as the guide sends it)
  end
  local content_type = string.lower(headers:get("content-type") or "")
  if string.match(content_type, "^application/json%s*;?") == nil then
    refuse(handle, 415, "the request body must be JSON, sent with Content-Type: application/json")
    return
  end
  local message = body_message(string.match(headers:get(":path") or "", "^[^?]*"))
  if message == nil then
    return
  end
  local body = handle:body()
  if body == nil then
    return
  end
  local text = body:getBytes(0, body:length())
  local ok, failure = pcall(check_value, text, skip_space(text, 1), {kind = "message", message = message}, "", 0)
  if not ok then
    if getmetatable(failure) ~= Problem then
      error(failure, 0)
    end
    refuse(handle, 400, failure.message)
  end
end

-- On the way back, listed before the transcoder, this sees what the transcoder made of the response:
--   a gRPC error, which convert_grpc_status turned into a google.rpc.Status body {"code":..,"message":"..",..};
--   or a reply of Envoy's own, already shaped {"detail":".."} by local_reply_config.
-- Message texts are copied as they are escaped in the JSON, so no JSON decoding is needed.

-- The JSON string value of `key` (still escaped), or nil.
local function json_string(text, key)
  local start = select(2, string.find(text, '"' .. key .. '"%s*:%s*"'))
  if not start then
    return nil
  end
  local i = start + 1
  while i <= #text do
    local c = string.sub(text, i, i)
    if c == "\\" then
      i = i + 2
    elseif c == '"' then
      return string.sub(text, start + 1, i - 1)
    else
      i = i + 1
    end
  end
  return nil
end

-- The transcoder's own wording for bad query values and unknown parameters, in the API's words.
local function friendlier(message)
  local field, value = string.match(message, '^([%w_]+): invalid value \\"(.-)\\" for type TYPE_INT32$')
  -- A whole number the 32-bit field cannot hold.
  if field and string.match(value, "^%+?%d+$") then
    return field .. " is out of range: at most 2147483647, got " .. value
  end
  if field and string.match(value, "^%-%d+$") then
    return field .. " is out of range: at least -2147483648, got " .. value
  end
  if field then
    return field .. ' must be an integer, got \\"' .. value .. '\\"'
  end
  local unknown = string.match(message, '^Could not find field \\"(.-)\\" in the type')
  if unknown then
    return 'unknown parameter \\"' .. unknown .. '\\"'
  end
  if string.find(message, "^Unexpected token") or string.find(message, "^Invalid JSON") then
    return "the request body is not valid JSON"
  end
  if string.find(message, "^Encountered non UTF%-8") then
    return "the request body is not valid UTF-8"
  end
  local path = string.match(message, "^Could not resolve (.-) to a method%.$")
  if path then
    return "no such endpoint: " .. path
  end
  return message
end

function envoy_on_response(handle)
  local status = tonumber(handle:headers():get(":status")) or 0
  if status < 400 then
    return
  end
  local body = handle:body()
  local text = body and body:getBytes(0, body:length()) or ""
  local message = json_string(text, "message") or json_string(text, "detail")
  if message == nil or message == "" then
    message = "request failed with HTTP status " .. status
  end
  local detail = '{"detail":"' .. friendlier(message) .. '"}'
  if body then
    body:setBytes(detail)
  end
  -- The headers object from before body() is out of scope now: ask for it again.
  -- FAILED_PRECONDITION (9): the thing's state forbids the call (a rejected version, a serving-only process).
  -- Envoy's table says 400, but the request itself is fine: 409, as every state conflict of this API.
  if status == 400 and string.match(text, '^%s*{%s*"code"%s*:%s*9%s*[,}]') then
    handle:headers():replace(":status", "409")
  end
  handle:headers():replace("content-type", "application/json")
  handle:headers():replace("content-length", tostring(#detail))
end
