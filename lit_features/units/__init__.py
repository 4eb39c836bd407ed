"""Work units: a manifest cut into slices that jobs claim through the store, each with its own index files.

See ``docs/scale_out.md``. :mod:`.unit_list` (the list of units and where their files live), :mod:`.cutting`
(the streaming cut, a unit's samples), :mod:`.lease` (exclusive-create leases with heartbeat and expiry),
:mod:`.claims` (a job taking units one after another), :mod:`.rows` (reading and compacting unit indexes).
"""
