-- wrk script: every request carries "Authorization: Bearer <token>", rotating through the
-- tokens in the file named by the first script argument (one token per line, one `sub` each).
-- Usage: wrk ... -s bench/gateway/rotate_tokens.lua URL -- /path/to/tokens.txt
local tokens = {}
local i = 0

function init(args)
  local path = args[1]
  if not path then error("rotate_tokens.lua: pass the tokens file after --") end
  for line in io.lines(path) do
    if #line > 0 then tokens[#tokens + 1] = line end
  end
  if #tokens == 0 then error("rotate_tokens.lua: no tokens in " .. path) end
  -- Start each wrk thread at a different offset so threads do not move in lockstep.
  i = (math.random(#tokens)) - 1
end

function request()
  i = i % #tokens + 1
  return wrk.format("GET", nil, { ["Authorization"] = "Bearer " .. tokens[i] })
end
