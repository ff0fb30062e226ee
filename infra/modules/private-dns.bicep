// One private DNS zone, linked to the registry's VNet and, optionally, to a client VNet.

param zoneName string
param vnetId string

@description('Resource id of another VNet whose clients resolve the registry privately; empty for none.')
param clientVnetId string = ''

param tags object

resource zone 'Microsoft.Network/privateDnsZones@2020-06-01' = {
  name: zoneName
  location: 'global'
  tags: tags
}

resource registryLink 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = {
  parent: zone
  name: 'registry-vnet'
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: vnetId
    }
  }
}

resource clientLink 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = if (!empty(clientVnetId)) {
  parent: zone
  name: 'client-vnet'
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: clientVnetId
    }
  }
}

output zoneId string = zone.id
