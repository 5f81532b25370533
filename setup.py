"""ament_python package definition for vizloc_ros (the runtime: node, hooks, backends, geodesy, bags).

The built-in localizers (``plugins/``) and the offline training stack (``training/``) are separate
pip distributions; see README.md.
"""
from glob import glob

from setuptools import setup

package_name = 'vizloc_ros'

setup(
    name=package_name,
    version='0.1.0',
    packages=[package_name, f'{package_name}.backends', f'{package_name}.evaluation'],
    package_data={package_name: ['py.typed']},
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{package_name}']),
        (f'share/{package_name}', ['package.xml']),
        (f'share/{package_name}/launch', glob('launch/*.launch.py')),
        (f'share/{package_name}/config', glob('config/*.yaml') + glob('config/*.xml') + glob('config/*.rviz')
         + glob('config/*.json')),
        (f'share/{package_name}/config/robot_localization', glob('config/robot_localization/*.yaml')),
    ],
    # Runtime Python dependencies come from rosdep (package.xml) on a robot and from
    # requirements.txt in a pip venv; setuptools itself is the only install requirement.
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='vizloc_ros maintainers',
    maintainer_email='maintainers@vizloc.invalid',
    description='Visual localization node for ROS 2 with pluggable deep-learning localizers.',
    license='Apache-2.0',
    tests_require=['pytest'],
    entry_points={
        'console_scripts': [
            'vizloc_node = vizloc_ros.node:main',
            'vizloc-replay = vizloc_ros.replay:main',
            'vizloc-smoke = vizloc_ros.smoke:main',
            'vizloc-eval = vizloc_ros.evaluation.cli:main',
        ],
    },
)
