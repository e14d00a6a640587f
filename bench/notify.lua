-- wrk script of bench/ingest.py: every request is a different job's notification.
--
-- Configured through the environment (bench/ingest.py sets it; wrk's own script arguments
-- do not reach the main Lua state, where done() runs):
--   BENCH_MODE      "job": POST to each job's own callback path read from BENCH_JOBS_FILE
--                   "queue": POST to BENCH_QUEUE_PATH with a fresh JobId per request
--   BENCH_JOBS_FILE lines "<path> <JobId>" (job mode)
--   BENCH_FIRST     first line (0-based) of this run's slice of the file (job mode)
--   BENCH_COUNT     lines in this run's slice (job mode) / JobIds per thread (queue mode)
--   BENCH_RUN       14 hex digits that make this run's queue-mode JobIds unique
--   BENCH_THREADS   wrk's -t: the slice is partitioned by thread, no two requests share a job
--   BENCH_BODY_FILE the notification, with {{JOBID}} where the JobId goes
--   BENCH_WRAP      "1": start the slice over when it runs out (the bare app stores nothing)
--   BENCH_OUT       prefix of the files done() writes: .generated and .answered JobIds
-- done() prints one "BENCH key=value ..." line for bench/ingest.py to read.

local mode = os.getenv("BENCH_MODE") or "job"
local nthreads = tonumber(os.getenv("BENCH_THREADS") or "2")
local wrap = os.getenv("BENCH_WRAP") == "1"
local out = os.getenv("BENCH_OUT")

local threads = {}
local thread_count = 0

function setup(thread)
   thread:set("id", thread_count)
   thread_count = thread_count + 1
   table.insert(threads, thread)
end

-- per-thread state (each wrk thread has its own Lua state)
local paths, jobids = {}, {}
local next_index = 1
local body_head, body_tail
local headers = { ["Content-Type"] = "application/xml" }
statuses = {}
outcomes = {}
generated = {}
answered = {}
exhausted = 0

local function read_body()
   local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
   local text = f:read("*a")
   f:close()
   local at = assert(text:find("{{JOBID}}", 1, true), "no {{JOBID}} in the body template")
   return text:sub(1, at - 1), text:sub(at + #"{{JOBID}}")
end

function init(args)
   body_head, body_tail = read_body()
   if mode == "job" then
      local first = tonumber(os.getenv("BENCH_FIRST") or "0")
      local last = first + tonumber(os.getenv("BENCH_COUNT") or "0")
      local line_no = 0
      for line in io.lines(os.getenv("BENCH_JOBS_FILE")) do
         if line_no >= last then break end
         if line_no >= first and (line_no - first) % nthreads == id then
            local path, jobid = line:match("^(%S+) (%S+)$")
            paths[#paths + 1] = path
            jobids[#jobids + 1] = jobid
         end
         line_no = line_no + 1
      end
   end
end

local function next_job()
   local i = next_index
   if mode == "job" then
      if i > #paths then
         if not wrap or #paths == 0 then return nil end
         i = (i - 1) % #paths + 1
      end
      next_index = next_index + 1
      return paths[i], jobids[i]
   end
   local limit = tonumber(os.getenv("BENCH_COUNT") or "0")
   if i > limit then
      if not wrap then return nil end
      i = (i - 1) % limit + 1
   end
   next_index = next_index + 1
   local jobid = "j" .. os.getenv("BENCH_RUN") .. string.format("%02x%016x", id, i)
   return os.getenv("BENCH_QUEUE_PATH"), jobid
end

function request()
   local path, jobid = next_job()
   if path == nil then
      -- out of jobs: answered 404 by both servers, counted as non-2xx and reported
      exhausted = exhausted + 1
      return wrk.format("POST", "/bench-exhausted", headers, "")
   end
   if not wrap then generated[#generated + 1] = jobid end
   return wrk.format("POST", path, headers, body_head .. jobid .. body_tail)
end

function response(status, hdrs, body)
   statuses[status] = (statuses[status] or 0) + 1
   if status >= 200 and status < 300 and body and #body > 0 then
      local ci = body:match('"ci_job_id":%s*"([^"]+)"')
      if ci then answered[#answered + 1] = ci end
      local outcome = body:match('"outcome":%s*"([^"]+)"')
      if outcome then outcomes[outcome] = (outcomes[outcome] or 0) + 1 end
   end
end

local function write_list(path, lists)
   local f = assert(io.open(path, "w"))
   for _, list in ipairs(lists) do
      for _, item in ipairs(list) do f:write(item, "\n") end
   end
   f:close()
end

function done(summary, latency, requests)
   local all_statuses, all_outcomes = {}, {}
   local generated_lists, answered_lists = {}, {}
   local total_exhausted = 0
   for _, t in ipairs(threads) do
      for status, n in pairs(t:get("statuses") or {}) do
         all_statuses[status] = (all_statuses[status] or 0) + n
      end
      for outcome, n in pairs(t:get("outcomes") or {}) do
         all_outcomes[outcome] = (all_outcomes[outcome] or 0) + n
      end
      generated_lists[#generated_lists + 1] = t:get("generated") or {}
      answered_lists[#answered_lists + 1] = t:get("answered") or {}
      total_exhausted = total_exhausted + (t:get("exhausted") or 0)
   end
   if out then
      write_list(out .. ".generated", generated_lists)
      write_list(out .. ".answered", answered_lists)
   end
   local ok, non2xx = 0, 0
   local status_text = {}
   for status, n in pairs(all_statuses) do
      if status >= 200 and status < 300 then ok = ok + n else non2xx = non2xx + n end
      status_text[#status_text + 1] = string.format("%d:%d", status, n)
   end
   table.sort(status_text)
   local outcome_text = {}
   for outcome, n in pairs(all_outcomes) do
      outcome_text[#outcome_text + 1] = string.format("%s:%d", outcome, n)
   end
   table.sort(outcome_text)
   local e = summary.errors
   io.write(string.format(
      "BENCH responses=%d ok=%d non2xx=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d "
         .. "max_us=%d mean_us=%.1f err_connect=%d err_read=%d err_write=%d err_timeout=%d "
         .. "exhausted=%d statuses=%s outcomes=%s\n",
      summary.requests, ok, non2xx, summary.duration,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean, e.connect, e.read, e.write, e.timeout, total_exhausted,
      table.concat(status_text, ","), table.concat(outcome_text, ",")))
end
