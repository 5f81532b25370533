"""vizloc_ros: visual localization for ROS 2 with pluggable deep-learning localizers.

The runtime package: core types (:mod:`vizloc_ros.types`), the localizer contract
(:mod:`vizloc_ros.localizer`), pluggy hooks (:mod:`vizloc_ros.hookspecs`), inference backends
(:mod:`vizloc_ros.backends`), model bundles (:mod:`vizloc_ros.bundle`), geodesy
(:mod:`vizloc_ros.geodesy`), ROS message conversion, rosbag2 I/O (:mod:`vizloc_ros.bags`), the evaluation-bag
contract (:mod:`vizloc_ros.eval_bag`) and the node. It never imports torch.
"""
__version__ = '0.1.0'
