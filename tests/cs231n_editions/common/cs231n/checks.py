# The notebooks' checks (FullyConnectedNets, BatchNormalization, Dropout, ConvolutionalNetworks),
# each returning the numbers the notebook prints, so that two runs can be compared.
import numpy as np

import cs231n
from cs231n.classifiers.cnn import ThreeLayerConvNet
from cs231n.classifiers.fc_net import FullyConnectedNet
from cs231n.fast_layers import *
from cs231n.gradient_check import eval_numerical_gradient, eval_numerical_gradient_array
from cs231n.layer_utils import *
from cs231n.layers import *
from cs231n.optim import adam, rmsprop, sgd_momentum
from cs231n.solver import Solver

EDITION = cs231n.EDITION
# The classifiers' arguments by era: 2016-2017 (use_batchnorm, dropout = drop probability), 2019
# (normalization, dropout = keep probability), 2022 (dropout_keep_ratio, from 2021).
ERA = 2017 if EDITION <= 2017 else 2019 if EDITION < 2021 else 2022


def rel_error(x, y):
    return np.max(np.abs(x - y) / (np.maximum(1e-8, np.abs(x) + np.abs(y))))


def grad_errors(f, inputs, dout, backward, cache_of):
    """rel_error of each analytic gradient against eval_numerical_gradient_array."""
    grads = backward(dout, cache_of())
    errors = []
    for i, a in enumerate(inputs):
        if not isinstance(a, np.ndarray):
            continue
        num = eval_numerical_gradient_array(lambda v, i=i: f(*inputs[:i], v, *inputs[i + 1:])[0], a, dout)
        errors.append(rel_error(num, grads[len(errors)] if isinstance(grads, tuple) else grads))
    return errors, grads


def layer_checks():
    out = {}
    np.random.seed(231)
    x, w, b = np.random.randn(10, 2, 3), np.random.randn(6, 5), np.random.randn(5)
    out['err_affine'], g = grad_errors(affine_forward, (x, w, b), np.random.randn(10, 5), affine_backward,
                                   lambda: affine_forward(x, w, b)[1])
    out['affine_grads'] = g
    x = np.random.randn(10, 10)
    out['err_relu'], _ = grad_errors(relu_forward, (x,), np.random.randn(10, 10), relu_backward,
                                 lambda: relu_forward(x)[1])
    x, w, b = np.random.randn(2, 3, 5, 5), np.random.randn(3, 3, 3, 3), np.random.randn(3)
    cp = {'stride': 1, 'pad': 1}
    out['err_conv_naive'], g = grad_errors(conv_forward_naive, (x, w, b, cp), np.random.randn(2, 3, 5, 5),
                                       conv_backward_naive, lambda: conv_forward_naive(x, w, b, cp)[1])
    out['conv_naive_grads'] = g
    out['conv_fast_vs_naive'] = rel_error(conv_forward_fast(x, w, b, cp)[0], conv_forward_naive(x, w, b, cp)[0])
    x = np.random.randn(3, 2, 8, 8)
    pp = {'pool_height': 2, 'pool_width': 2, 'stride': 2}
    out['err_pool_naive'], _ = grad_errors(max_pool_forward_naive, (x, pp), np.random.randn(3, 2, 4, 4),
                                       max_pool_backward_naive, lambda: max_pool_forward_naive(x, pp)[1])
    out['err_pool_fast'], _ = grad_errors(max_pool_forward_fast, (x, pp), np.random.randn(3, 2, 4, 4),
                                      max_pool_backward_fast, lambda: max_pool_forward_fast(x, pp)[1])
    x, w, b = np.random.randn(2, 3, 8, 8), np.random.randn(3, 3, 3, 3), np.random.randn(3)
    out['err_conv_relu_pool'], _ = grad_errors(conv_relu_pool_forward, (x, w, b, cp, pp), np.random.randn(2, 3, 4, 4),
                                           conv_relu_pool_backward, lambda: conv_relu_pool_forward(x, w, b, cp, pp)[1])
    gamma, beta = np.random.randn(3), np.random.randn(3)
    f = lambda x, w, b, gamma, beta: conv_bn_relu_forward(x, w, b, gamma, beta, cp, {'mode': 'train'})
    out['err_conv_bn_relu'], _ = grad_errors(f, (x, w, b, gamma, beta), np.random.randn(2, 3, 8, 8),
                                         conv_bn_relu_backward, lambda: f(x, w, b, gamma, beta)[1])
    x, y = 0.001 * np.random.randn(50, 10), np.random.randint(10, size=50)
    for name, fn in (('svm', svm_loss), ('softmax', softmax_loss)):
        loss, dx = fn(x, y)
        out[name + '_loss'] = loss
        out['err_' + name] = rel_error(eval_numerical_gradient(lambda x: fn(x, y)[0], x, verbose=False), dx)
    return out


def norm_checks():
    out = {}
    np.random.seed(231)
    N, D1, D2, D3 = 200, 50, 60, 3
    X = np.random.randn(N, D1)
    W1, W2 = np.random.randn(D1, D2), np.random.randn(D2, D3)
    a = np.maximum(0, X.dot(W1)).dot(W2)
    bn_param = {'mode': 'train'}
    a_norm, _ = batchnorm_forward(a, np.asarray([1.0, 2.0, 3.0]), np.asarray([11.0, 12.0, 13.0]), bn_param)
    out['bn_means'], out['bn_stds'] = a_norm.mean(axis=0), a_norm.std(axis=0)
    for t in range(20):
        a = np.maximum(0, np.random.randn(N, D1).dot(W1)).dot(W2)
        batchnorm_forward(a, np.ones(D3), np.zeros(D3), bn_param)
    bn_param['mode'] = 'test'
    a = np.maximum(0, np.random.randn(N, D1).dot(W1)).dot(W2)
    a_norm, _ = batchnorm_forward(a, np.ones(D3), np.zeros(D3), bn_param)
    out['bn_test_means'], out['bn_test_stds'] = a_norm.mean(axis=0), a_norm.std(axis=0)
    x, gamma, beta = 5 * np.random.randn(4, 5) + 12, np.random.randn(5), np.random.randn(5)
    f = lambda x, gamma, beta: batchnorm_forward(x, gamma, beta, {'mode': 'train'})
    for name, bw in (('bn', batchnorm_backward), ('bn_alt', batchnorm_backward_alt)):
        out['err_' + name], _ = grad_errors(f, (x, gamma, beta), np.random.randn(4, 5), bw,
                                            lambda: f(x, gamma, beta)[1])
    x, gamma, beta = 5 * np.random.randn(2, 3, 4, 5) + 12, np.random.randn(3), np.random.randn(3)
    f = lambda x, gamma, beta: spatial_batchnorm_forward(x, gamma, beta, {'mode': 'train'})
    out['err_spatial_bn'], _ = grad_errors(f, (x, gamma, beta), np.random.randn(2, 3, 4, 5),
                                       spatial_batchnorm_backward, lambda: f(x, gamma, beta)[1])
    if ERA >= 2019:
        x, gamma, beta = 5 * np.random.randn(4, 5) + 12, np.random.randn(5), np.random.randn(5)
        f = lambda x, gamma, beta: layernorm_forward(x, gamma, beta, {})
        out['err_ln'], _ = grad_errors(f, (x, gamma, beta), np.random.randn(4, 5), layernorm_backward,
                                   lambda: f(x, gamma, beta)[1])
        x = 5 * np.random.randn(2, 6, 4, 5) + 12
        gamma, beta = np.random.randn(1, 6, 1, 1), np.random.randn(1, 6, 1, 1)
        f = lambda x, gamma, beta: spatial_groupnorm_forward(x, gamma, beta, 2, {})
        out['err_gn'], g = grad_errors(f, (x, gamma, beta), np.random.randn(2, 6, 4, 5), spatial_groupnorm_backward,
                                   lambda: f(x, gamma, beta)[1])
        out['gn_out'] = f(x, gamma, beta)[0]
    return out


def dropout_checks():
    out = {}
    np.random.seed(231)
    x = np.random.randn(500, 500) + 10
    for p in (0.25, 0.4, 0.7):
        train, _ = dropout_forward(x, {'mode': 'train', 'p': p})
        test, _ = dropout_forward(x, {'mode': 'test', 'p': p})
        out['p=%s' % p] = (x.mean(), train.mean(), test.mean(), (train == 0).mean())
    x, dout = np.random.randn(10, 10) + 10, np.random.randn(10, 10)
    dp = {'mode': 'train', 'p': 0.2, 'seed': 123}
    out['err_dropout'], _ = grad_errors(lambda x: dropout_forward(x, dp), (x,), dout, dropout_backward,
                                    lambda: dropout_forward(x, dp)[1])
    return out


def optim_checks():
    out = {}
    N, D = 4, 5
    w = np.linspace(-0.4, 0.6, num=N * D).reshape(N, D)
    dw = np.linspace(-0.6, 0.4, num=N * D).reshape(N, D)
    v = np.linspace(0.6, 0.9, num=N * D).reshape(N, D)
    out['sgd_momentum'] = sgd_momentum(w, dw, {'learning_rate': 1e-3, 'velocity': v})[0]
    out['rmsprop'] = rmsprop(w, dw, {'learning_rate': 1e-2, 'cache': v})[0]
    m = np.linspace(0.7, 0.5, num=N * D).reshape(N, D)
    config = {'learning_rate': 1e-2, 'm': m, 'v': v, 't': 5}
    out['adam'] = adam(w, dw, config)[0]
    out['adam_t'] = config['t']
    fresh = {}
    out['adam_fresh'] = adam(w, dw, fresh)[0]
    out['adam_fresh_t'] = fresh['t']
    return out


def model_checks():
    out = {}
    np.random.seed(231)
    N, D, H1, H2, C = 2, 6, 7, 8, 4
    X, y = np.random.randn(N, D), np.random.randint(C, size=(N,))
    kinds = [dict(), dict(normalization='batchnorm')] if ERA >= 2019 else [dict(), dict(use_batchnorm=True)]
    if ERA >= 2019:
        kinds.append(dict(normalization='layernorm'))
    keep = {2017: ('dropout', 0.25), 2019: ('dropout', 0.75), 2022: ('dropout_keep_ratio', 0.75)}[ERA]
    kinds.append({keep[0]: keep[1], 'seed': 123})
    for k, kw in enumerate(kinds):
        for reg in (0, 3.14):
            model = FullyConnectedNet([H1, H2], input_dim=D, num_classes=C, reg=reg, weight_scale=5e-2,
                                      dtype=np.float64, **kw)
            loss, grads = model.loss(X, y)
            errs = [rel_error(eval_numerical_gradient(lambda _: model.loss(X, y)[0], model.params[n],
                                                      verbose=False, h=1e-5), grads[n]) for n in sorted(grads)]
            out['fc%d_reg%s_loss' % (k, reg)] = loss
            out['err_fc%d_reg%s' % (k, reg)] = max(errs)
    model = ThreeLayerConvNet(input_dim=(3, 8, 8), num_filters=3, filter_size=3, hidden_dim=7, weight_scale=1e-2,
                              dtype=np.float64)
    X, y = np.random.randn(2, 3, 8, 8), np.random.randint(10, size=2)
    loss, grads = model.loss(X, y)
    out['err_cnn'] = [rel_error(eval_numerical_gradient(lambda _: model.loss(X, y)[0], model.params[n],
                                                          verbose=False, h=1e-6), grads[n]) for n in sorted(grads)]
    out['cnn_loss'] = loss
    return out


def overfit_checks(data):
    out = {}
    small = {k: v[:50] if k.endswith('train') else v[:20] for k, v in data.items()}
    np.random.seed(231)
    model = ThreeLayerConvNet(num_filters=8, filter_size=3, hidden_dim=40, weight_scale=1e-2)  # float32 params
    solver = Solver(model, small, num_epochs=8, batch_size=25, update_rule='adam',
                    optim_config={'learning_rate': 2e-3}, verbose=False)
    solver.train()
    out['cnn_loss_history'] = np.array(solver.loss_history, dtype=np.float64)
    out['cnn_train_acc'] = solver.train_acc_history
    np.random.seed(231)
    keep = {2017: {'dropout': 0.1}, 2019: {'dropout': 0.9}, 2022: {'dropout_keep_ratio': 0.9}}[ERA]
    norm = {'use_batchnorm': True} if ERA == 2017 else {'normalization': 'batchnorm'}
    model = FullyConnectedNet([50, 50], weight_scale=5e-2, **norm, **keep)
    solver = Solver(model, small, num_epochs=10, batch_size=25, update_rule='sgd_momentum',
                    optim_config={'learning_rate': 1e-2}, verbose=False)
    solver.train()
    out['fc_loss_history'] = np.array(solver.loss_history, dtype=np.float64)
    out['fc_train_acc'] = solver.train_acc_history
    return out
