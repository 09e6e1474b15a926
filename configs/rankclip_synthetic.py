"""RankCLIP on the embedded synthetic scenes: the out-of-the-box CPU demo (a few minutes).

  python main.py --config=configs/rankclip_synthetic.py --workdir=runs/demo
"""

from configs import common


def get_config():
  c = common.base_config()
  return c
