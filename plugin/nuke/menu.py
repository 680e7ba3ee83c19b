# keyprop's Nuke plugin folder, run by Nuke at start-up with a GUI: the toolbar entry.
import nuke

nuke.toolbar("Nodes").addMenu("KeyProp").addCommand("KeyProp", "nuke.createNode('KeyProp')")
