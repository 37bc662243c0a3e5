-- Forward every new MR study to GadSynth once Orthanc considers it stable (StableAge seconds after the last
-- instance). Forwarding GadSynth's own results too would be harmless: it recognises them and starts nothing.
function OnStableStudy(studyId, tags, metadata)
  local series = ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))
  for i, s in pairs(series) do
    if s['MainDicomTags']['Modality'] == 'MR' then
      RestApiPost('/modalities/gadsynth/store', studyId)
      return
    end
  end
end
