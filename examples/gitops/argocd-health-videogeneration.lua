-- Argo CD health check for wanops.io/VideoGeneration.
-- Register it in argocd-cm as resource.customizations.health.wanops.io_VideoGeneration
-- (see argocd-cm-patch.yaml). Lua 5.1, as Argo CD's gopher-lua runs it.
--
-- Reads the operator's kstatus conditions (Ready, Reconciling, Stalled) and status.phase:
--   Healthy      Ready=True (phase Succeeded: the video is uploaded)
--   Degraded     Stalled=True (phase Failed); the message is the condition's reason and message
--   Suspended    phase Suspended (spec.suspend is true; nothing runs until it is set false)
--   Progressing  everything else: no status yet, a generation the operator has not seen,
--                Pending, Queued (waiting for Kueue), Running, retrying after a lost pod
local hs = {}

local function describe(cond)
  if cond.message ~= nil and cond.message ~= "" then
    if cond.reason ~= nil and cond.reason ~= "" then
      return cond.reason .. ": " .. cond.message
    end
    return cond.message
  end
  return cond.reason or ""
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the wanops operator to accept the VideoGeneration"
  return hs
end

-- A status computed from an older spec says nothing about the current one (kstatus rule).
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the wanops operator to observe generation " .. tostring(generation)
  return hs
end

local conditions = {}
if status.conditions ~= nil then
  for _, cond in ipairs(status.conditions) do
    if cond.type ~= nil then
      conditions[cond.type] = cond
    end
  end
end

local function is_true(kind)
  return conditions[kind] ~= nil and conditions[kind].status == "True"
end

local phase = status.phase

if is_true("Stalled") or phase == "Failed" then
  hs.status = "Degraded"
  if conditions["Stalled"] ~= nil then
    hs.message = describe(conditions["Stalled"])
  elseif status.failure ~= nil then
    hs.message = describe(status.failure)
  else
    hs.message = "Failed"
  end
  return hs
end

if is_true("Ready") or phase == "Succeeded" then
  hs.status = "Healthy"
  if status.output ~= nil and status.output.uri ~= nil then
    hs.message = "Video uploaded to " .. status.output.uri
  elseif conditions["Ready"] ~= nil then
    hs.message = describe(conditions["Ready"])
  else
    hs.message = "Succeeded"
  end
  return hs
end

if phase == "Suspended" then
  hs.status = "Suspended"
else
  hs.status = "Progressing"
end
if conditions["Reconciling"] ~= nil then
  hs.message = describe(conditions["Reconciling"])
elseif phase ~= nil then
  hs.message = phase
else
  hs.message = "Waiting for the wanops operator"
end
if phase == "Running" and status.progress ~= nil and status.progress.percent ~= nil then
  hs.message = hs.message .. " (" .. tostring(status.progress.percent) .. "%)"
end
return hs
