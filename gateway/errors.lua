-- Gives every error answer of the API the body {"detail": "<message>"}.
--
-- Listed before the transcoder, so on the way back it sees what the transcoder made of the response:
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
  handle:headers():replace("content-type", "application/json")
  handle:headers():replace("content-length", tostring(#detail))
end
