import numpy as np

# 2025: optim.py comes with assignment 2 already written (the update rules are assignment 1's
# work that year); its rules update w, the velocity and the cache in place, and Adam folds both
# bias corrections into the step size.


def sgd(w, dw, config=None):
    if config is None:
        config = {}
    config.setdefault('learning_rate', 1e-2)
    w -= config['learning_rate'] * dw
    return w, config


def sgd_momentum(w, dw, config=None):
    if config is None:
        config = {}
    config.setdefault('learning_rate', 1e-2)
    config.setdefault('momentum', 0.9)
    vel = config.get('velocity', np.zeros_like(w))
    vel *= config['momentum']
    vel -= config['learning_rate'] * dw
    w += vel
    config['velocity'] = vel
    return w, config


def rmsprop(w, dw, config=None):
    if config is None:
        config = {}
    config.setdefault('learning_rate', 1e-2)
    config.setdefault('decay_rate', 0.99)
    config.setdefault('epsilon', 1e-8)
    config.setdefault('cache', np.zeros_like(w))
    decay = config['decay_rate']
    config['cache'] *= decay
    config['cache'] += (1 - decay) * dw ** 2
    w += -(config['learning_rate'] * dw) / (np.sqrt(config['cache']) + config['epsilon'])
    return w, config


def adam(w, dw, config=None):
    if config is None:
        config = {}
    config.setdefault('learning_rate', 1e-3)
    config.setdefault('beta1', 0.9)
    config.setdefault('beta2', 0.999)
    config.setdefault('epsilon', 1e-8)
    config.setdefault('m', np.zeros_like(w))
    config.setdefault('v', np.zeros_like(w))
    config.setdefault('t', 0)
    b1, b2 = config['beta1'], config['beta2']
    config['m'] = b1 * config['m'] + (1 - b1) * dw
    config['v'] = b2 * config['v'] + (1 - b2) * (dw * dw)
    config['t'] += 1
    t = config['t']
    step = config['learning_rate'] * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    w -= step * (config['m'] / (np.sqrt(config['v']) + config['epsilon']))
    return w, config
