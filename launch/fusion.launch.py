"""vizloc + robot_localization: wheel odometry fused with the visual pose and fix.

    ros2 launch vizloc_ros fusion.launch.py localizer:=scene odom:=/wheel/odometry \
        params_file:=/path/to/my_localize.yaml

Starts the vizloc node (launch/localize.launch.py with the same arguments), a map-frame EKF
(odometry + ``/vizloc/<localizer>/pose`` + the fix through navsat_transform), an odom-frame EKF
(odometry only) and navsat_transform, with config/robot_localization/{ekf,navsat_transform}.yaml.
Set the vizloc node's ``base_frame`` / ``T_base_camera_*`` to your robot (docs/node.md, Frames).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node

#: Topic names (checked against what the node publishes by test/test_fusion_config.py).
VIZLOC_POSE_TOPIC = '/vizloc/{localizer}/pose'
VIZLOC_FIX_TOPIC = '/vizloc/{localizer}/fix'
ODOMETRY_GPS_TOPIC = 'odometry/gps'
EKF_CONFIG = 'ekf.yaml'
NAVSAT_CONFIG = 'navsat_transform.yaml'


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory('vizloc_ros')
    rl_config = os.path.join(share, 'config', 'robot_localization')
    ekf_yaml = os.path.join(rl_config, EKF_CONFIG)
    navsat_yaml = os.path.join(rl_config, NAVSAT_CONFIG)
    localizer = LaunchConfiguration('localizer')
    odom = LaunchConfiguration('odom')
    args = [
        DeclareLaunchArgument('localizer', default_value='scene',
                              description='Name of the vizloc localizer whose pose and fix are fused.'),
        DeclareLaunchArgument('odom', default_value='/odom', description='Wheel odometry topic (nav_msgs/Odometry).'),
        DeclareLaunchArgument('params_file', default_value=os.path.join(share, 'config', 'localize.yaml'),
                              description='vizloc parameters file.'),
        DeclareLaunchArgument('use_sim_time', default_value='false', description='Use /clock (bag replay).'),
    ]
    vizloc = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(share, 'launch', 'localize.launch.py')),
        launch_arguments={'params_file': LaunchConfiguration('params_file'),
                          'use_sim_time': LaunchConfiguration('use_sim_time')}.items())
    pose_topic = PythonExpression(["'", VIZLOC_POSE_TOPIC, "'.format(localizer='", localizer, "')"])
    fix_topic = PythonExpression(["'", VIZLOC_FIX_TOPIC, "'.format(localizer='", localizer, "')"])
    sim_time = {'use_sim_time': LaunchConfiguration('use_sim_time')}
    ekf_map = Node(package='robot_localization', executable='ekf_node', name='ekf_filter_node_map', output='screen',
                   parameters=[ekf_yaml, sim_time, {'pose0': pose_topic}],
                   remappings=[('odom', odom), ('odometry/filtered', 'odometry/filtered/map')])
    ekf_odom = Node(package='robot_localization', executable='ekf_node', name='ekf_filter_node_odom', output='screen',
                    parameters=[ekf_yaml, sim_time],
                    remappings=[('odom', odom), ('odometry/filtered', 'odometry/filtered/odom')])
    navsat = Node(package='robot_localization', executable='navsat_transform_node', name='navsat_transform',
                  output='screen', parameters=[navsat_yaml, sim_time],
                  remappings=[('gps/fix', fix_topic), ('odometry/filtered', 'odometry/filtered/map'),
                              ('odometry/gps', ODOMETRY_GPS_TOPIC)])
    return LaunchDescription(args + [vizloc, ekf_map, ekf_odom, navsat])
