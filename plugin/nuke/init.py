# keyprop's Nuke plugin folder, run by Nuke at start-up in every mode (GUI and `nuke -x`).
# Without a GUI, a Write that renders a KeyProp gizmo first fills its missing frames.
import nuke

import keyprop_nuke

nuke.addBeforeRender(keyprop_nuke.before_render)
