"""The vizloc node fused with wheel odometry by robot_localization (REP-105 map/odom/base_link).

    ros2 launch vizloc_ros fusion.launch.py odom:=/wheel/odometry imu:=/imu/data

Starts launch/localize.launch.py (the node `vizloc`, config/localize.yaml) plus
robot_localization's ``ekf_node`` twice (``ekf_odom``: odom -> base_link from wheel odometry;
``ekf_map``: map -> odom from wheel odometry, ``/vizloc/scene/pose`` and navsat_transform's
``/odometry/gps``) and ``navsat_transform_node`` (``/vizloc/gps/fix`` -> ``/odometry/gps``),
configured by config/robot_localization/{ekf,navsat_transform}.yaml. The node publishes base_link's
pose (parameters base_frame, camera_xyz_m, camera_rpy_rad: set your camera's mounting); see
docs/node.md "Fusion with robot_localization". Needs ros-<distro>-robot-localization.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory('vizloc_ros')
    ekf_params = os.path.join(share, 'config', 'robot_localization', 'ekf.yaml')
    navsat_params = os.path.join(share, 'config', 'robot_localization', 'navsat_transform.yaml')
    use_sim_time = {'use_sim_time': ParameterValue(LaunchConfiguration('use_sim_time'), value_type=bool)}
    args = [
        DeclareLaunchArgument('odom', default_value='/odom', description='Wheel odometry (nav_msgs/Odometry).'),
        DeclareLaunchArgument('imu', default_value='/imu', description='IMU for navsat_transform (optional).'),
        DeclareLaunchArgument('use_sim_time', default_value='false', description='Use /clock (bag replay).'),
    ]
    localize = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(share, 'launch', 'localize.launch.py')),
        launch_arguments={'use_sim_time': LaunchConfiguration('use_sim_time')}.items())
    ekf_odom = Node(package='robot_localization', executable='ekf_node', name='ekf_odom', output='screen',
                    parameters=[ekf_params, use_sim_time],
                    remappings=[('/odom', LaunchConfiguration('odom')), ('odometry/filtered', '/odometry/filtered_odom')])
    ekf_map = Node(package='robot_localization', executable='ekf_node', name='ekf_map', output='screen',
                   parameters=[ekf_params, use_sim_time],
                   remappings=[('/odom', LaunchConfiguration('odom')), ('odometry/filtered', '/odometry/filtered_map')])
    navsat = Node(package='robot_localization', executable='navsat_transform_node', name='navsat_transform',
                  output='screen', parameters=[navsat_params, use_sim_time],
                  remappings=[('gps/fix', '/vizloc/gps/fix'), ('imu', LaunchConfiguration('imu')),
                              ('odometry/filtered', '/odometry/filtered_map'), ('odometry/gps', '/odometry/gps')])
    return LaunchDescription(args + [localize, ekf_odom, ekf_map, navsat])
