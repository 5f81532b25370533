"""Launch the vizloc localization node with config/localize.yaml.

    ros2 launch vizloc_ros localize.launch.py namespace:=drone1 image:=/camera/image_raw \
        camera_info:=/camera/camera_info params_file:=/path/to/my_localize.yaml

Sets FASTDDS_DEFAULT_PROFILES_FILE to the package's config/fastdds_shm.xml (shared-memory
transport with a 16 MB segment, needed for lossless images between processes) unless it is
already set; the camera driver must use the same profile (see docs/node.md).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory('vizloc_ros')
    default_params = os.path.join(share, 'config', 'localize.yaml')
    fastdds_profile = os.path.join(share, 'config', 'fastdds_shm.xml')
    rviz_config = os.path.join(share, 'config', 'vizloc.rviz')

    args = [
        DeclareLaunchArgument('namespace', default_value='', description='Namespace of the node and its topics.'),
        DeclareLaunchArgument('params_file', default_value=default_params, description='ROS parameters file.'),
        DeclareLaunchArgument('image', default_value='/camera/image_raw',
                              description='Image topic (raw) to remap `image` to; its compressed form is '
                                          '<image>/compressed. Default: the evaluation-bag topic.'),
        DeclareLaunchArgument('camera_info', default_value='/camera/camera_info',
                              description='CameraInfo topic. Default: the evaluation-bag topic.'),
        DeclareLaunchArgument('use_sim_time', default_value='false', description='Use /clock (bag replay).'),
        DeclareLaunchArgument('autostart', default_value='true',
                              description='Configure and activate at start-up (false: drive the lifecycle yourself).'),
        DeclareLaunchArgument('log_level', default_value='info', description='Logger level of the node.'),
        DeclareLaunchArgument('rviz', default_value='false', description='Also start RViz with config/vizloc.rviz.'),
    ]
    image = LaunchConfiguration('image')
    actions = []
    if 'FASTDDS_DEFAULT_PROFILES_FILE' not in os.environ:  # only if the user did not choose a profile
        actions.append(SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE', fastdds_profile))
    node = Node(
        package='vizloc_ros',
        executable='vizloc_node',
        name='vizloc',
        namespace=LaunchConfiguration('namespace'),
        output='screen',
        emulate_tty=True,
        parameters=[
            LaunchConfiguration('params_file'),
            {'use_sim_time': ParameterValue(LaunchConfiguration('use_sim_time'), value_type=bool),
             'autostart': ParameterValue(LaunchConfiguration('autostart'), value_type=bool)},
        ],
        remappings=[
            ('image', image),
            ('image/compressed', [image, '/compressed']),
            ('camera_info', LaunchConfiguration('camera_info')),
        ],
        arguments=['--ros-args', '--log-level', LaunchConfiguration('log_level')],
    )
    rviz = Node(package='rviz2', executable='rviz2', name='rviz2', arguments=['-d', rviz_config],
                condition=IfCondition(LaunchConfiguration('rviz')), output='log')
    return LaunchDescription(args + actions + [node, rviz])
