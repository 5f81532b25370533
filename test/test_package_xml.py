"""package.xml declares every ROS package the runtime imports or its launch files start.

(Whether each rosdep key resolves is checked against ros/rosdistro's rosdep/python.yaml by hand;
package.xml records the date. No network here.)
"""
from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Top-level modules that are ROS packages (anything ending in _msgs/_srvs/_interfaces is one too).
ROS_MODULES = {'rclpy', 'rcl_interfaces', 'builtin_interfaces', 'rosidl_runtime_py', 'cv_bridge', 'tf2_ros',
               'ament_index_python', 'launch', 'launch_ros'}


def _imported(paths: list[Path]) -> set[str]:
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split('.')[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split('.')[0])
    return {n for n in names if n in ROS_MODULES or re.search(r'_(msgs|srvs|interfaces)$', n)}


def test_every_imported_or_launched_ros_package_is_declared() -> None:
    root = ET.parse(REPO / 'package.xml').getroot()
    declared = {e.text for e in root if e.tag in ('exec_depend', 'depend')}
    sources = sorted((REPO / 'vizloc_ros').rglob('*.py')) + sorted((REPO / 'launch').glob('*.py'))
    used = _imported(sources)
    launched = {m for p in (REPO / 'launch').glob('*.py') for m in re.findall(r"package='(\w+)'", p.read_text())}
    assert {'rcl_interfaces', 'builtin_interfaces', 'ament_index_python', 'rclpy'} <= used
    assert {'rviz2', 'robot_localization', 'vizloc_ros'} <= launched
    missing = sorted((used | launched) - declared - {'vizloc_ros'})
    assert not missing, f'package.xml lacks exec_depend for {missing}'
    assert 'python3-pluggy' not in declared, 'rosdistro has no python3-pluggy key; pluggy is installed with pip'
