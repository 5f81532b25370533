"""package.xml declares every ROS package the runtime and the launch files import, and no key rosdep lacks."""
from __future__ import annotations

import ast
import xml.etree.ElementTree as ET

from test_node_support import REPO

#: Python modules that are ROS packages (their package.xml key is the module name).
ROS_MODULES = {'rclpy', 'launch', 'launch_ros', 'ament_index_python', 'cv_bridge', 'tf2_ros', 'rosidl_runtime_py'}
#: rosdep keys that do not exist in rosdistro's rosdep/*.yaml (installed with pip instead, README).
NO_ROSDEP_KEY = {'python3-pluggy', 'python3-onnxruntime', 'python3-rosbags'}


def _imported_ros_packages() -> set[str]:
    found = set()
    files = list((REPO / 'vizloc_ros').rglob('*.py')) + list((REPO / 'launch').glob('*.py'))
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            for name in names:
                top = name.split('.')[0]
                if top in ROS_MODULES or top.endswith(('_msgs', '_srvs', '_interfaces')):
                    found.add(top)
    return found


def test_every_imported_ros_package_is_declared_and_no_missing_rosdep_key_is_used() -> None:
    root = ET.parse(REPO / 'package.xml').getroot()
    declared = {e.text for e in root if e.tag in ('depend', 'exec_depend', 'build_depend')}
    imported = _imported_ros_packages()
    assert {'rclpy', 'sensor_msgs', 'rcl_interfaces', 'builtin_interfaces', 'ament_index_python'} <= imported
    missing = imported - declared - {'tf2_ros'}  # tf2_ros: optional, imported only where available
    assert not missing, f'imported but not in package.xml: {sorted(missing)}'
    assert not declared & NO_ROSDEP_KEY, f'no rosdep key exists for {sorted(declared & NO_ROSDEP_KEY)}'
    # launch files start these executables
    launch_text = ''.join(p.read_text() for p in (REPO / 'launch').glob('*.py'))
    for package in ('rviz2', 'robot_localization'):
        if f"package='{package}'" in launch_text:
            assert package in declared, package
