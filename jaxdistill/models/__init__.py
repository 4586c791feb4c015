"""Built-in Flax modules, addressable by name in `teacher.module` / `student.module`, and
`Model` (`models.adapter`): the one interface the trainer sees for linen and NNX modules."""

from jaxdistill.models.adapter import Model
from jaxdistill.models.bert import BertEncoder
from jaxdistill.models.cnn import CNN
from jaxdistill.models.decoder import Decoder
from jaxdistill.models.mlp import MLP
from jaxdistill.models.resnet import ResNet, ResNet18, ResNet20, ResNet50, ResNet56

BUILTIN = {
    'bert': BertEncoder,
    'mlp': MLP,
    'cnn': CNN,
    'decoder': Decoder,
    'resnet': ResNet,
    'resnet18': ResNet18,
    'resnet20': ResNet20,
    'resnet50': ResNet50,
    'resnet56': ResNet56,
}

__all__ = ['BUILTIN', 'BertEncoder', 'CNN', 'Decoder', 'MLP', 'Model', 'ResNet', 'ResNet18',
           'ResNet20', 'ResNet50', 'ResNet56']
