"""Plugin discovery isolates failures: a plugin that cannot be imported is reported, the rest load."""
import json
import os
import subprocess
import sys
import textwrap


def _fake_distribution(site, dist_name, entry_points):
    info = site / f'{dist_name}-0.0.1.dist-info'
    info.mkdir(parents=True)
    (info / 'METADATA').write_text(f'Metadata-Version: 2.1\nName: {dist_name}\nVersion: 0.0.1\n')
    lines = ['[vizloc_ros.localizers]'] + [f'{name} = {value}' for name, value in entry_points.items()]
    (info / 'entry_points.txt').write_text('\n'.join(lines) + '\n')


def test_unimportable_plugin_is_reported_and_others_still_load(tmp_path):
    site = tmp_path / 'site'
    _fake_distribution(site, 'broken_plugin', {'broken': 'vizloc_no_such_module_xyz'})
    (site / 'good_plugin_mod.py').write_text(textwrap.dedent('''
        from vizloc_ros.hookspecs import hookimpl
        from vizloc_ros.localizer import LocalizerType

        @hookimpl
        def vizloc_register_localizers(registry):
            registry.register(LocalizerType(name='good_type', factory=lambda c, o, x: None, needs_bundle=False))
    '''))
    _fake_distribution(site, 'good_plugin', {'good': 'good_plugin_mod'})
    code = textwrap.dedent('''
        import json
        from vizloc_ros.plugin_manager import load_registry
        r = load_registry(blocked=['nothing_blocked'])
        print(json.dumps({'loaded': r.loaded, 'failed': r.failed, 'types': sorted(r.registry.types)}))
    ''')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get('PYTHONPATH', '')]))
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=60, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert 'broken' in report['failed']
    assert 'vizloc_no_such_module_xyz' in report['failed']['broken']
    assert 'good' in report['loaded']
    assert 'good_type' in report['types']
